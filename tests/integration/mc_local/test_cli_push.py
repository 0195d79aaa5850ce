"""``mc push`` refuses bad input before any request (the server path is covered in
tests/integration/plugins/test_message_center_api.py)."""

from __future__ import annotations

import json

import pytest

from mc_local.cli import main

NOWHERE = ["--url", "http://127.0.0.1:9", "--token", "t"]


@pytest.mark.fast
@pytest.mark.parametrize(("args", "message"), [
    (["--type", "ORDER"], "event: email is required when wishedChannel is 'email'"),
    (["--type", "OTP", "--channel", "sms", "--mobile-phone", "abc"], "mobilePhone is not"),
    (["--type", "ORDER", "--email", "a@example.com", "--ctx", "{oops"], "--ctx is not valid"),
    (["--type", "ORDER", "--email", "a@example.com", "--ctx", "[]"], "ctx must be a JSON"),
    (["--json", '["not", "an", "event"]'], "--json must be a JSON object"),
    ([], "give --type"),
    (["--file", "/nonexistent/events.jsonl"], "no such file"),
    (["--type", "ORDER", "--email", "a@example.com", "--attach", "/nonexistent/a.pdf"],
     "--attach /nonexistent/a.pdf: No such file"),
])
def test_bad_input_exits_2_with_the_reason(capsys, args, message):
    assert main(["push", *NOWHERE, *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.fast
def test_a_bad_line_is_named_by_its_number_and_nothing_is_sent(tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    good = json.dumps({"type": "ORDER", "email": "a@example.com"})
    path.write_text(f"{good}\n\n{good}\n{{broken\n" + json.dumps({"type": "ORDER"}) + "\n")
    assert main(["push", *NOWHERE, "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: line is not valid JSON" in err
    assert f"{path}:5: email is required" in err
    assert "nothing was pushed" in err


def test_an_unreachable_server_is_exit_1(capsys):
    assert main(["push", *NOWHERE, "--type", "ORDER", "--email", "a@example.com"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.fast
def test_the_help_examples_fit_the_demo_templates():
    """Every `mc push --type ...` example of `mc push --help` is a valid event whose ctx
    fits the declaration of the repository's template for its type and channel."""
    import shlex

    from mc_airflow.defaults import TEMPLATES_DIR
    from mc_local.cli import build_parser
    from mc_local.cli.events import event_from_args
    from message_center.templates import load_templates
    from message_center.templates.ctx_schema import check_ctx

    parser = build_parser()
    push = parser._subparsers._group_actions[0].choices["push"]
    examples = [line.strip() for line in push.epilog.splitlines()
                if line.strip().startswith("mc push --type")]
    assert len(examples) == 2, push.epilog
    templates = {(t.event_type, t.channel): t for t in load_templates(TEMPLATES_DIR).templates}
    for example in examples:
        args = parser.parse_args(shlex.split(example)[1:])
        event = event_from_args(args)
        template = templates[(event["type"], event.get("wishedChannel", "email"))]
        assert check_ctx(template.ctx_schema, event["ctx"], template.internal_name)[1] == [], \
            example


@pytest.mark.fast
def test_attach_checks_the_file_like_the_server(tmp_path, capsys):
    tool = tmp_path / "tool.exe"
    tool.write_bytes(b"MZ\x90\x00")
    assert main(["push", *NOWHERE, "--type", "ORDER", "--email", "a@example.com",
                 "--attach", str(tool)]) == 2
    assert "'tool.exe': files named *.exe are refused" in capsys.readouterr().err
