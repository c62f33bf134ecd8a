"""modules.devices: the few names the extension uses."""

from modules import record

device = "cuda"
cpu = "cpu"


def torch_gc():
    record("devices.torch_gc")
