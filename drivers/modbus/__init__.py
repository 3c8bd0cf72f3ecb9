"""Modbus RTU (RS-485), Modbus TCP and RTU over TCP: meters, pumps, sensors.

``config`` (the device model), ``codec`` (registers <-> values, RTU frames) and ``planner``
(read planning) import no protocol library; ``driver``, ``link`` and ``cli`` need pymodbus
(``pip install community-edge-agent[modbus]``).
"""
