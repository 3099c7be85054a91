"""Matchers parse and match as Alertmanager's classic parser (pkg/labels/parse.go) does."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from incident.rules.matchers import Matcher, MatcherError, MatchOp, parse_matcher, parse_matchers

EQ, NE, RE, NRE = MatchOp.EQUAL, MatchOp.NOT_EQUAL, MatchOp.REGEX, MatchOp.NOT_REGEX


# The cases of Alertmanager's TestMatchers, with its expected results.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{foo="bar"}', [("foo", EQ, "bar")]),
        ('{foo=~"bar.*"}', [("foo", RE, "bar.*")]),
        ('{foo!="bar"}', [("foo", NE, "bar")]),
        ('{foo!~"bar.*"}', [("foo", NRE, "bar.*")]),
        ('{foo="bar", baz!="quux"}', [("foo", EQ, "bar"), ("baz", NE, "quux")]),
        ('{foo="bar", baz!~"quux.*"}', [("foo", EQ, "bar"), ("baz", NRE, "quux.*")]),
        (
            '{foo="bar",baz!~".*quux", derp="wat"}',
            [("foo", EQ, "bar"), ("baz", NRE, ".*quux"), ("derp", EQ, "wat")],
        ),
        (
            '{foo="bar", instance=~"some-api.*"}',
            [("foo", EQ, "bar"), ("instance", RE, "some-api.*")],
        ),
        ('{foo=""}', [("foo", EQ, "")]),
        ('{foo="bar,quux", job="job1"}', [("foo", EQ, "bar,quux"), ("job", EQ, "job1")]),
        ('{foo = "bar", dings != "bums", }', [("foo", EQ, "bar"), ("dings", NE, "bums")]),
        ("foo=bar,dings!=bums", [("foo", EQ, "bar"), ("dings", NE, "bums")]),
        (
            r"""{quote="She said: \"Hi, ladies! That's gender-neutral…\""}""",
            [("quote", EQ, 'She said: "Hi, ladies! That\'s gender-neutral…"')],
        ),
        ('statuscode=~"5.."', [("statuscode", RE, "5..")]),
        ("tricky=~~~", [("tricky", RE, "~~")]),
        (r"trickier==\\=\=\"", [("trickier", EQ, r'=\=\="')]),
        (
            r'contains_quote != "\"" , contains_comma !~ "foo,bar" , ',
            [("contains_quote", NE, '"'), ("contains_comma", NRE, "foo,bar")],
        ),
        ("job=", [("job", EQ, "")]),
        (r'msg="line\nbreak"', [("msg", EQ, "line\nbreak")]),
        (r'path="C:\\temp"', [("path", EQ, "C:\\temp")]),
        (r'spurious="\x"', [("spurious", EQ, r"\x")]),
        (r"digits=~\d+", [("digits", RE, r"\d+")]),
        ("", []),
    ],
)
def test_parses_like_alertmanager(text: str, expected: list[tuple[str, MatchOp, str]]) -> None:
    assert parse_matchers(text) == [Matcher(*each) for each in expected]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('job="value', "never closed"),
        ('job=value"', "unescaped double quote"),
        (r'trickier==\\=\=\""', "unescaped double quote"),
        ('contains_unescaped_quote = foo"bar', "unescaped double quote"),
        ('{invalid-name = "valid label"}', "expected a label name"),
        ('{foo=~"invalid[regexp"}', "invalid regular expression"),
        # Double-escaped strings, as pasted from JSON.
        (r'"{foo=\"bar"}', "expected a label name"),
        (r'"foo=\"bar"', "expected a label name"),
        (r'"foo=\"bar\""', "expected a label name"),
        (r'"foo=\"bar\"', "expected a label name"),
        (r'"{foo=\"bar\"}"', "expected a label name"),
        ('"foo="bar""', "expected a label name"),
        ('a="1",,b="2"', "empty matcher"),
        ("severity", "expected a label name"),
        # Go's regexp is RE2: no backreferences, look-around, possessive or atomic groups.
        (r'a=~"(a)\\1"', "invalid regular expression"),
        ('a=~"(?=x)x"', "invalid regular expression"),
        ('a=~"(?<!x)y"', "invalid regular expression"),
        ('a=~"a++"', "invalid regular expression"),
        ('a=~"(?>a)"', "invalid regular expression"),
        # Python's own flags, which Go does not know.
        ('a=~"(?x)a b"', "invalid regular expression"),
    ],
)
def test_refuses_what_alertmanager_refuses(text: str, problem: str) -> None:
    with pytest.raises(MatcherError, match=problem):
        parse_matchers(text)


def test_error_names_the_offending_matcher() -> None:
    with pytest.raises(MatcherError) as raised:
        parse_matchers('env="prod", severity=~"crit(ical"')
    assert 'severity=~"crit(ical"' in str(raised.value)
    assert raised.value.matcher_text == 'severity=~"crit(ical"'


def test_regex_is_anchored_at_both_ends() -> None:
    (status,) = parse_matchers('status=~"5.."')
    assert status.matches({"status": "503"})
    assert not status.matches({"status": "5000"})
    assert not status.matches({"status": "1503"})


def test_regex_alternation_is_anchored_as_a_whole() -> None:
    (severity,) = parse_matchers('severity=~"warning|error"')
    assert severity.matches({"severity": "error"})
    assert not severity.matches({"severity": "warning-ish"})
    assert not severity.matches({"severity": "an error"})


def test_leading_inline_flags_apply_to_the_whole_value() -> None:
    (severity,) = parse_matchers('severity=~"(?i)critical"')
    assert severity.matches({"severity": "CRITICAL"})


def test_inline_flags_apply_to_the_rest_of_their_group_anywhere() -> None:
    # Go accepts `(?i)` mid-pattern; Python's re refuses it there.
    (severity,) = parse_matchers('severity=~"crit(?i)ICAL"')
    assert severity.matches({"severity": "critical"})
    assert severity.matches({"severity": "critICAL"})
    assert not severity.matches({"severity": "CRITICAL"})


def test_anchoring_is_alertmanagers_text_wrapping() -> None:
    # Alertmanager compiles "^(?:" + value + ")$", so an unbalanced value
    # splits the anchors between its alternatives. Same matcher, same alerts.
    (odd,) = parse_matchers('x=~"a)|(b"')
    assert odd.matches({"x": "a-anything"})
    assert odd.matches({"x": "anything-b"})
    assert not odd.matches({"x": "c"})


def test_perl_classes_are_ascii_as_in_go() -> None:
    assert not Matcher("code", RE, r"\d+").matches({"code": "٣٠٣"})
    assert Matcher("code", RE, r"\d+").matches({"code": "303"})
    assert not Matcher("word", RE, r"\w+").matches({"word": "café"})
    assert Matcher("word", RE, r"\pL+").matches({"word": "café"})


def test_matching_takes_linear_time_in_the_value() -> None:
    # A backtracking engine takes seconds here (quadratic in the value); RE2 does not.
    matcher = Matcher("instance", RE, ".*-.*-prod")
    value = "-" * 40_000
    started = time.perf_counter()
    assert not matcher.matches({"instance": value})
    assert time.perf_counter() - started < 0.5


def test_parsing_takes_linear_time_in_the_text() -> None:
    # Matchers also come from the API (maintenance windows): a long run of
    # blanks must not make the parser backtrack.
    started = time.perf_counter()
    with pytest.raises(MatcherError, match="never closed"):
        parse_matcher('a="' + " " * 40_000 + "x")
    assert parse_matcher("a=x" + " " * 40_000) == Matcher("a", EQ, "x")
    assert time.perf_counter() - started < 0.5


def test_missing_label_matches_as_empty_string() -> None:
    no_team: dict[str, str] = {}
    assert Matcher("team", NE, "ops").matches(no_team)
    assert Matcher("team", NRE, "ops|sre").matches(no_team)
    assert Matcher("team", EQ, "").matches(no_team)
    assert Matcher("team", RE, ".*").matches(no_team)
    assert not Matcher("team", EQ, "ops").matches(no_team)
    assert not Matcher("team", RE, ".+").matches(no_team)


def test_negative_matchers_reject_the_value() -> None:
    assert not Matcher("team", NE, "ops").matches({"team": "ops"})
    assert not Matcher("team", NRE, "o.s").matches({"team": "ops"})
    assert Matcher("team", NRE, "o.s").matches({"team": "opsy"})


def test_operator_may_be_given_as_text() -> None:
    assert Matcher("a", "=~", "b.*") == Matcher("a", RE, "b.*")


def test_constructing_an_invalid_matcher_fails() -> None:
    with pytest.raises(MatcherError, match="label name"):
        Matcher("bad-name", EQ, "x")
    with pytest.raises(MatcherError, match="operator"):
        Matcher("a", "==", "x")
    with pytest.raises(MatcherError, match="regular expression"):
        Matcher("a", RE, "(")


def test_str_renders_alertmanager_syntax() -> None:
    assert str(Matcher("msg", EQ, 'say "hi"\\\n')) == r'msg="say \"hi\"\\\n"'
    assert str(Matcher("code", NRE, "5..")) == 'code!~"5.."'


label_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]*", fullmatch=True)


@given(name=label_names, op=st.sampled_from(list(MatchOp)), value=st.text())
def test_rendering_then_parsing_gives_the_same_matcher(name: str, op: MatchOp, value: str) -> None:
    try:
        matcher = Matcher(name, op, value)
    except MatcherError:
        return  # not every text is a regular expression
    assert parse_matchers(str(matcher)) == [matcher]


@given(
    matchers=st.lists(
        st.builds(Matcher, label_names, st.sampled_from([EQ, NE]), st.text()), max_size=5
    )
)
def test_a_rendered_list_parses_back(matchers: list[Matcher]) -> None:
    text = "{" + ", ".join(str(each) for each in matchers) + "}"
    assert parse_matchers(text) == matchers


@given(value=st.text())
def test_equality_matcher_accepts_exactly_its_value(value: str) -> None:
    matcher = Matcher("label", EQ, value)
    assert matcher.matches({"label": value})
    assert not matcher.matches({"label": value + "x"})
