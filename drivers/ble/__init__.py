"""BLE tags on bleak and BlueZ: presence, SOS buttons, battery and sensor beacons."""
