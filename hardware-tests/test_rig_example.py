"""The serial rig on its own: the named port is a terminal the kernel lets us configure.

The smallest real hardware test, and the model for drivers' tests: mark the rig, take its
variables from the ``rig`` fixture. A failure here (wrong device, no permission, a counterfeit
chip the driver refuses) explains a Modbus or OSDP failure on the same adapter before anyone
looks at protocol code.
"""

from __future__ import annotations

import os
import termios

import pytest


@pytest.mark.hardware("serial")
def test_serial_port_is_a_configurable_terminal(rig: dict[str, str]) -> None:
    port = rig["EDGE_HW_SERIAL_PORT"]
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except PermissionError:
        pytest.fail(f"{port}: permission denied; is this user in the dialout group?")
    try:
        assert os.isatty(fd), f"{port} is not a terminal device"
        saved = termios.tcgetattr(fd)
        try:
            # 9600 8N1, raw, as a meter bus runs; the driver must accept and report it back.
            iflag, oflag, cflag, lflag, _ispeed, _ospeed, cc = saved
            cflag = (cflag & ~(termios.CSIZE | termios.PARENB | termios.CSTOPB)) | termios.CS8
            wanted = [iflag, oflag, cflag, lflag, termios.B9600, termios.B9600, cc]
            termios.tcsetattr(fd, termios.TCSANOW, wanted)
            got = termios.tcgetattr(fd)
            assert got[4:6] == [termios.B9600, termios.B9600]
            assert got[2] & (termios.CSIZE | termios.PARENB | termios.CSTOPB) == termios.CS8
        finally:
            termios.tcsetattr(fd, termios.TCSANOW, saved)
    finally:
        os.close(fd)
