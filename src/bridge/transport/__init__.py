"""NATS and JetStream: the connection, publishing with PubAcks, the management API,
and one delivery with its acknowledgements.  Nothing here knows a database."""
