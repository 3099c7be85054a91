"""Placeholders: what they may name, how they render, and what a URL value becomes."""

from __future__ import annotations

import pytest

from incident.rules.templates import (
    MissingEnvironmentVariable,
    MissingLabel,
    Placeholder,
    TemplateError,
    TemplateValues,
    UnsafePathValue,
    escape_url_value,
    parse_template,
    render,
    render_url,
    render_value,
    sole_placeholder,
)

VALUES = TemplateValues(
    labels={"service": "api", "instance": "10.0.0.1:9100"},
    incident={
        "key": "4f0c2a",
        "id": 42,
        "severity": "SEV1",
        "title": "HighErrorRate api",
        "url": "http://incident.example/incidents/42",
    },
    remediation={"name": "restart-api"},
    env={"TOKEN": "s3cret"},
)


class TestParsing:
    def test_literal_text_and_placeholders_in_order(self) -> None:
        assert parse_template("/services/{labels.service}/restart?i={incident.id}") == (
            "/services/",
            Placeholder("labels", "service"),
            "/restart?i=",
            Placeholder("incident", "id"),
        )

    def test_doubled_braces_are_literal(self) -> None:
        assert parse_template("{{labels.service}} {{") == ("{labels.service} {",)
        assert render("{{{labels.service}}}", VALUES) == "{api}"

    def test_text_without_placeholders(self) -> None:
        assert parse_template("restart") == ("restart",)
        assert parse_template("") == ()

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("{labels}", "unknown placeholder {labels}"),
            ("{service}", "unknown placeholder {service}"),
            ("{incident.status2}", "unknown placeholder {incident.status2}"),
            ("{remediation.retry}", "unknown placeholder {remediation.retry}"),
            ("{secrets.TOKEN}", "unknown placeholder {secrets.TOKEN}"),
            ("{0.__class__}", "unknown placeholder"),
            ("{incident.__class__}", "unknown placeholder"),
            ("{labels.service-name}", "'service-name' is not a valid label name"),
            ("{labels.service[0]}", "not a valid label name"),
            ("{ labels.service }", "unknown placeholder"),
            ("/x/{labels.service", "unbalanced '{' at position 3"),
            ("/x/labels.service}", "unbalanced '}' at position 17"),
            ("{labels.{service}}", "unbalanced"),
        ],
    )
    def test_invalid_templates(self, text: str, message: str) -> None:
        with pytest.raises(TemplateError, match=message.replace("[", r"\[").replace("{", r"\{")):
            parse_template(text)

    def test_env_only_where_allowed(self) -> None:
        with pytest.raises(TemplateError, match="only in http headers and command env"):
            parse_template("Bearer {env.TOKEN}")
        assert parse_template("Bearer {env.TOKEN}", allow_env=True) == (
            "Bearer ",
            Placeholder("env", "TOKEN"),
        )
        with pytest.raises(TemplateError, match="not a valid environment variable name"):
            parse_template("{env.MY-TOKEN}", allow_env=True)

    def test_sole_placeholder(self) -> None:
        assert sole_placeholder("{labels.service}") == Placeholder("labels", "service")
        assert sole_placeholder("x{labels.service}") is None
        assert sole_placeholder("{labels.a}{labels.b}") is None


class TestRendering:
    def test_every_namespace(self) -> None:
        text = (
            "{labels.service} {incident.key} {incident.id} {incident.severity} "
            "{incident.title} {incident.url} {remediation.name}"
        )
        assert render(text, VALUES) == (
            "api 4f0c2a 42 SEV1 HighErrorRate api http://incident.example/incidents/42 restart-api"
        )

    def test_env_is_read_only_when_allowed(self) -> None:
        assert render("Bearer {env.TOKEN}", VALUES, allow_env=True) == "Bearer s3cret"

    def test_a_missing_label_names_it(self) -> None:
        with pytest.raises(
            MissingLabel, match=r"no label 'cluster' \(used as \{labels.cluster\}\)"
        ):
            render("/{labels.cluster}/", VALUES)

    def test_an_empty_label_is_a_missing_label(self) -> None:
        # Prometheus does not tell an empty label from an absent one.
        values = TemplateValues(labels={"service": ""})
        with pytest.raises(MissingLabel):
            render("/{labels.service}/", values)

    def test_a_missing_environment_variable_names_it_and_not_a_value(self) -> None:
        with pytest.raises(MissingEnvironmentVariable, match="DEPLOY_TOKEN is not set"):
            render("{env.DEPLOY_TOKEN}", VALUES, allow_env=True)

    def test_without_an_environment_values_are_shown_not_read(self) -> None:
        values = TemplateValues(labels={}, env=None)
        assert render("Bearer {env.TOKEN}", values, allow_env=True) == "Bearer <from $TOKEN>"

    def test_unknown_incident_fields_stay_placeholders(self) -> None:
        values = TemplateValues(labels={}, incident={"title": "Disk full"})
        assert render("{incident.title} #{incident.id}", values) == "Disk full #{incident.id}"

    def test_escape_applies_to_values_not_literal_text(self) -> None:
        values = TemplateValues(labels={"path": "a/b?c"})
        assert render("/x?y=/{labels.path}", values, escape=escape_url_value) == "/x?y=/a%2Fb%3Fc"

    def test_a_lone_placeholder_keeps_its_type(self) -> None:
        assert render_value("{incident.id}", VALUES) == 42
        assert render_value("#{incident.id}", VALUES) == "#42"
        assert render_value("{labels.service}", VALUES) == "api"

    def test_rendered_values_are_not_rendered_again(self) -> None:
        values = TemplateValues(labels={"service": "{env.TOKEN}{labels.x}"}, env={"TOKEN": "s"})
        assert render("{labels.service}", values, allow_env=True) == "{env.TOKEN}{labels.x}"


class TestUrlEscaping:
    @pytest.mark.parametrize(
        ("value", "escaped"),
        [
            ("api", "api"),
            ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd"),
            ("evil.example#", "evil.example%23"),
            ("@evil.example", "%40evil.example"),
            ("a?x=1&y=2", "a%3Fx%3D1%26y%3D2"),
            ("line\nbreak", "line%0Abreak"),
            ("100%", "100%25"),
            ("a b+c", "a%20b%2Bc"),
            ("ünï", "%C3%BCn%C3%AF"),
            ("...", "..."),
            ("a..b", "a..b"),
        ],
    )
    def test_values_cannot_leave_their_segment(self, value: str, escaped: str) -> None:
        assert escape_url_value(value) == escaped


class TestUrlPaths:
    @pytest.mark.parametrize(
        "value", [".", "..", "a/b", "a\\b", "/", "\uff0e", "\uff0e\uff0e", "\uff0f", "\uff3c"]
    )
    def test_a_value_that_is_a_dot_segment_or_holds_a_separator_is_refused_in_the_path(
        self, value: str
    ) -> None:
        values = TemplateValues(labels={"service": value})
        with pytest.raises(UnsafePathValue, match=r"^\{labels\.service\} is "):
            render_url("http://h/services/{labels.service}/restart", values)

    def test_in_the_query_or_fragment_the_same_values_are_escaped(self) -> None:
        values = TemplateValues(labels={"a": "..", "b": "x/y"})
        assert render_url("http://h/p?a={labels.a}#{labels.b}", values) == "http://h/p?a=..#x%2Fy"

    def test_an_ordinary_value_is_escaped_in_the_path(self) -> None:
        values = TemplateValues(labels={"service": "a b?#"})
        assert render_url("http://h/{labels.service}/x", values) == "http://h/a%20b%3F%23/x"

    def test_a_long_refused_value_is_shown_short(self) -> None:
        values = TemplateValues(labels={"service": "a/" * 50_000})
        with pytest.raises(UnsafePathValue) as refused:
            render_url("http://h/{labels.service}", values)
        assert len(str(refused.value)) < 400 and "(100000 characters)" in str(refused.value)
