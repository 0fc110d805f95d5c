"""The virtual school: room physics and Modbus servers built from the same device profiles."""
