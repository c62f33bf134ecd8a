"""Stand-in of the WebUI's `modules` package (see ../README.md)."""

# Test instrumentation, not part of the WebUI: every WebUI call the extension makes, in order.
CALLS: list = []


def record(*call) -> None:
    CALLS.append(call[0] if len(call) == 1 else call)
