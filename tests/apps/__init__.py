"""Services that tests run in separate node processes (``--app tests.apps.<module>:node``)."""
