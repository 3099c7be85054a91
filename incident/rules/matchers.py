"""Alertmanager label matchers: ``name="value"``, ``!=``, ``=~``, ``!~``.

Parsing follows Alertmanager's classic parser (``pkg/labels/parse.go``) rule
for rule, quirks included, so a matcher copied from a routing tree or an
``amtool`` command line means the same thing here as it does there.

Regexes are RE2's, as in Alertmanager (Go's ``regexp`` is RE2): the same
syntax, and matching in time linear in the value, so no label value can hold
a process for long, whatever the pattern.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial

import re2

# Go's RE2 `\s` is ASCII whitespace only; Python's `\s` would also eat
# Unicode spaces that Alertmanager keeps as part of a value.
_GO_SPACES = "\t\n\f\r "
_GO_SPACE = rf"[{_GO_SPACES}]*"
# '=~' comes before '=' so that `a=~b` is a regex matcher, not `a` = `~b`.
# Trailing blanks are cut before matching: a lazy `(.*?)` followed by blanks
# would backtrack over a long run of them in quadratic time.
_MATCHER_SYNTAX = re.compile(
    rf"{_GO_SPACE}([a-zA-Z_:][a-zA-Z0-9_:]*){_GO_SPACE}(=~|=|!=|!~){_GO_SPACE}(.*)",
    re.DOTALL,
)
_LABEL_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _re2_options() -> re2.Options:
    options = re2.Options()
    # A refused pattern is reported through MatcherError; RE2 would also print
    # it on stderr.
    options.log_errors = False
    return options


_RE2_OPTIONS = _re2_options()


class MatcherError(ValueError):
    """A matcher that Alertmanager would refuse; the message quotes it."""

    def __init__(self, matcher_text: str, problem: str) -> None:
        super().__init__(f"invalid matcher {matcher_text!r}: {problem}")
        self.matcher_text = matcher_text
        self.problem = problem


class MatchOp(StrEnum):
    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


@dataclass(frozen=True, slots=True)
class Matcher:
    """One ``name op "value"`` test against an alert's labels.

    A label the alert does not carry counts as the empty string, as in
    Alertmanager: ``team!="ops"`` matches an alert without a ``team`` label
    and ``team=""`` selects exactly those alerts.
    """

    name: str
    op: MatchOp
    value: str
    _test: Callable[[str], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _LABEL_NAME.fullmatch(self.name):
            raise MatcherError(str(self), f"{self.name!r} is not a valid label name")
        try:
            op = MatchOp(self.op)
        except ValueError:
            raise MatcherError(
                f"{self.name}{self.op}{self.value}", "the operator must be =, !=, =~ or !~"
            ) from None
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "_test", self._compile_test())

    def _compile_test(self) -> Callable[[str], bool]:
        # Built once so that matching, which runs for every alert, is one call.
        if self.op is MatchOp.EQUAL:
            return partial(operator.eq, self.value)
        if self.op is MatchOp.NOT_EQUAL:
            return partial(operator.ne, self.value)
        pattern = _anchored_regex(self)
        if self.op is MatchOp.REGEX:
            return lambda value: pattern.search(value) is not None
        return lambda value: pattern.search(value) is None

    def __reduce__(self) -> tuple[type[Matcher], tuple[str, MatchOp, str]]:
        # The compiled test is a closure, which pickle cannot carry; rebuild it.
        return (Matcher, (self.name, self.op, self.value))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self._test(labels.get(self.name, ""))

    def __str__(self) -> str:
        # OpenMetrics escaping, the only escaping the parser undoes, so that
        # parse_matchers(str(m)) == [m] for every value.
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.op}"{escaped}"'


def _anchored_regex(matcher: Matcher) -> re2._Regexp:
    # Alertmanager's own anchoring, by text: `(?i)` anywhere keeps Go's meaning
    # (it applies to the rest of its group), and RE2's `$` is the end of the text.
    try:
        return re2.compile(f"^(?:{matcher.value})$", _RE2_OPTIONS)
    except re2.error as error:
        raise MatcherError(
            str(matcher),
            f"invalid regular expression (RE2 syntax, as Alertmanager's): {_re2_message(error)}",
        ) from None
    except UnicodeEncodeError:
        raise MatcherError(str(matcher), "the value is not valid UTF-8") from None


def _re2_message(error: re2.error) -> str:
    # The binding hands RE2's message over as bytes.
    detail = error.args[0] if error.args else error
    return detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)


def parse_matchers(text: str) -> list[Matcher]:
    """Parse a comma-separated list such as ``{foo="bar", baz=~"q.*",}``.

    The braces are optional, commas inside double quotes do not split, a
    ``\\"`` does not close a quote, and one trailing comma is tolerated.
    """
    text = text.removeprefix("{")
    text = text.removesuffix("}")

    tokens: list[str] = []
    token: list[str] = []
    inside_quotes = escaped = False
    for char in text:
        if char == ",":
            if not inside_quotes:
                tokens.append("".join(token))
                token = []
                continue
        elif char == '"':
            if escaped:
                escaped = False
            else:
                inside_quotes = not inside_quotes
        elif char == "\\":
            escaped = not escaped
        else:
            escaped = False
        token.append(char)
    # Only the last token is trimmed and may be empty: that is what makes a
    # trailing comma harmless while `a="1",,b="2"` stays an error.
    if last := "".join(token).strip():
        tokens.append(last)
    return [parse_matcher(each) for each in tokens]


def parse_matcher(text: str) -> Matcher:
    """Parse one ``name op value`` matcher; the value may be double-quoted."""
    syntax = _MATCHER_SYNTAX.fullmatch(text.rstrip(_GO_SPACES))
    if syntax is None and not text.strip():
        raise MatcherError(text, "empty matcher (two commas in a row?)")
    if syntax is None:
        raise MatcherError(
            text.strip(), "expected a label name, an operator (=, !=, =~, !~) and a value"
        )
    name, op, raw_value = syntax.groups()
    problem_text = text.strip()

    expect_closing_quote = raw_value.startswith('"')
    if expect_closing_quote:
        raw_value = raw_value[1:]
    try:
        raw_value.encode("utf-8")
    except UnicodeEncodeError:
        raise MatcherError(problem_text, "the value is not valid UTF-8") from None

    value: list[str] = []
    escaped = False
    last_index = len(raw_value) - 1
    for index, char in enumerate(raw_value):
        if escaped:
            escaped = False
            if char == "n":
                value.append("\n")
            elif char in '"\\':
                value.append(char)
            else:
                # A spurious escape such as `\d` keeps its backslash, which
                # is what lets unquoted regexes like `=~\d+` work.
                value.append("\\" + char)
            continue
        if char == "\\":
            if index < last_index:
                escaped = True
                continue
            value.append("\\")
        elif char == '"':
            if not expect_closing_quote or index < last_index:
                raise MatcherError(problem_text, "the value contains an unescaped double quote")
            expect_closing_quote = False
        else:
            value.append(char)
    if expect_closing_quote:
        raise MatcherError(problem_text, "the value's opening double quote is never closed")
    return Matcher(name, MatchOp(op), "".join(value))


def matches_all(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    """True when every matcher accepts the labels (an empty tuple accepts all)."""
    return all(matcher._test(labels.get(matcher.name, "")) for matcher in matchers)
