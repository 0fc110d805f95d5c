"""RFID readers on serial lines or TCP (`kind: rfid`): framings in `framing`, the driver in `driver`."""
