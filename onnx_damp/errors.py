"""User-facing errors: shown as one line without a traceback, with a non-zero exit code."""


class DampError(Exception):
    """A problem with the user's input (model, data, options), not a bug in onnx-damp."""

    exit_code = 2


GATE_FAILED = 3  # exit code when a --max-*/--min-* gate does not hold (the outputs are still written)
