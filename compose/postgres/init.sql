-- One database per system (the compose postgres service runs this once on an empty volume).
CREATE DATABASE system_a;
CREATE DATABASE system_b;
