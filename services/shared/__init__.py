"""The domain both systems share: Organization and User, their API and sync handlers."""
