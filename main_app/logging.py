"""
Log lines that a request cannot forge.

Paths, serials, header values and error texts reach log messages, and any of them can
carry a CR or LF: written raw, the rest of the value reads as a record of its own (a fake
"[ERROR] ... admin logged in" line). `EscapeControlCharacters` is installed on every
handler of the project (`main_app.settings.logging_config`), so no log call has to
remember it: control characters in a record's message and arguments become visible
escapes (`\\n`, `\\x1b`), and a traceback's lines are indented, so that in the output every
line that does not start with spaces is a record the code wrote.
"""

import logging
import re
import traceback

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators (which some
# viewers break lines on). Everything else, non-ASCII text included, is left as it is.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Continuation lines of a record (a traceback, a stack) start with this.
INDENT = "    "


def _escape_match(match: re.Match) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """`text` with every control character written as a visible escape."""
    return _CONTROL.sub(_escape_match, text)


# What every record has; anything else came in through `extra=` (a serial, a path).
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "_control_escaped",
}


def _indented(text: str) -> str:
    return "\n".join(INDENT + escape_control(line) for line in text.splitlines())


class EscapeControlCharacters(logging.Filter):
    """
    A handler filter that lets every record through, made safe in place: its message (with
    the arguments in it) and its `extra` text escaped, its traceback and stack indented
    line by line.

    A record whose message has no control character keeps its template and arguments, for
    handlers that group by template. A record can reach several handlers; it is made safe
    once, by the first.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_control_escaped", False):
            return True
        record._control_escaped = True
        try:
            # Formatted as the formatter would (%r, %d and the rest), then escaped.
            message = record.getMessage()
        except Exception:  # arguments that do not fit the template: keep both, readably
            message = f"{record.msg!s} (arguments: {record.args!r})"
            record.msg, record.args = message, None
        if _CONTROL.search(message):
            record.msg, record.args = escape_control(message), None
        for name, value in list(vars(record).items()):
            # For formatters that print them (JSON encodes them anyway).
            if name not in _RECORD_ATTRIBUTES and isinstance(value, str) and _CONTROL.search(value):
                setattr(record, name, escape_control(value))
        if record.exc_info and not record.exc_text:
            # Formatters print `exc_text` when it is set, so every handler prints this one.
            record.exc_text = _indented("".join(traceback.format_exception(*record.exc_info)))
        elif record.exc_text:
            record.exc_text = _indented(record.exc_text)
        if record.stack_info:
            record.stack_info = _indented(record.stack_info)
        return True
