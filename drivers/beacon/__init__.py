"""Bluetooth iBeacon check-in: iBeacon parsing, a presence tracker, and the scanner driver."""
