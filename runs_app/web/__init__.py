"""Event streams to clients and the live pages: the relay of a service's stream (``relay``), the mirror's feed of a
run (``feed``), and the pages and endpoints that show and drive a run as it happens (``live``).

May use: ops (metrics), errors, the poller, the services and everything below.
"""
