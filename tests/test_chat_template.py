"""Chat templates render in a child process with limits: hostile templates end as one-line
ChatTemplateErrors in bounded time, the child is replaced afterwards, cancel() stops a render.

Needs only jinja2 (no model).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from edgekit.errors import ChatTemplateError, InvalidOptionError, RenderCancelled
from edgekit.runtimes.chat_template import ChatTemplate, check_template

from tiny import CHATML

USER = [{"role": "user", "content": "hi"}]
posix_only = pytest.mark.skipif(os.name != "posix", reason="kills the child with SIGKILL")
HANG = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def _bomb_on_request(bomb: str) -> str:
    """A template that runs `bomb` when the first message says "bomb", and renders normally otherwise."""
    return ("{% if messages[0]['content'] == 'bomb' %}" + bomb
            + "{% else %}ok {{ messages[0]['content'] }}{% endif %}")


def test_renders_like_transformers():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    with ChatTemplate(CHATML) as template:
        text = template.render(messages)
        assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
                        "<|im_start|>assistant\n")
        assert template.render(messages, add_generation_prompt=False).endswith("Hello<|im_end|>\n")


def test_environment_matches_transformers():
    """trim_blocks/lstrip_blocks, loop controls, bos/eos, strftime_now, a tojson that does not escape HTML."""
    source = ("{{ bos_token }}\n  {% for m in messages %}\n{% if loop.index > 1 %}{% break %}{% endif %}"
              "{{ m['content'] | tojson }}\n{% endfor %}{{ strftime_now('%Y') }}{{ eos_token }}")
    with ChatTemplate(source, bos_token="<s>", eos_token="</s>") as template:
        text = template.render([{"role": "user", "content": "a<b & é"},
                                {"role": "user", "content": "never"}])
    assert text == f'<s>\n"a<b & é"\n{time.strftime("%Y")}</s>'


def test_raise_exception_becomes_chat_template_error():
    source = ("{% if messages[0]['role'] == 'system' %}"
              "{{ raise_exception('System role not supported') }}{% endif %}{{ messages[0]['content'] }}")
    with ChatTemplate(source) as template:
        assert template.render(USER) == "hi"
        with pytest.raises(ChatTemplateError, match="refused these messages: System role not supported$"):
            template.render([{"role": "system", "content": "x"}])
        assert template.render(USER) == "hi"  # a template error does not cost the child


def test_syntax_error_names_the_line():
    with ChatTemplate("hello\n{% for m in %}{% endfor %}") as template:
        with pytest.raises(ChatTemplateError, match="syntax error at line 2"):
            template.render(USER)


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ messages.append(1) }}",
    "{{ cycler.__init__.__globals__ }}",
])
def test_sandbox_violations_are_chat_template_errors(source):
    with ChatTemplate(source) as template:
        with pytest.raises(ChatTemplateError, match="sandbox forbids"):
            template.render(USER)


def test_runtime_errors_are_one_line():
    with ChatTemplate("line one\n{{ messages[0]['content'] + 1 }}") as template:
        with pytest.raises(ChatTemplateError, match=r"failed to render at line 2: TypeError") as info:
            template.render(USER)
    assert "\n" not in str(info.value)


BOMBS = {
    "nested ranges": HANG,
    "string repetition": "{{ 'x' * 10**10 }}",
    "integer power": "{{ 2 ** (10 ** 10) }}",
    "doubling with ~": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}{{ ns.s | length }}"),
    "doubling with +": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                        "{% endfor %}{{ ns.s | length }}"),
    "format width": "{{ '%0999999999d' | format(1) }}",
    "huge format width": "{{ '%09999999999d' | format(1) }}",
    "center": "{{ '' | center(2000000000) }}",
    "str.ljust": "{{ ''.ljust(2000000000) }}",
    "str.format width": "{{ '{:>1999999999}'.format(1) }}",
    "replace growth": ("{% set ns = namespace(s='xx') %}{% for i in range(64) %}"
                       "{% set ns.s = ns.s | replace('x', 'xx') %}{% endfor %}{{ ns.s | length }}"),
    "squaring integers": ("{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}"
                          "{% endfor %}{{ ns.n > 0 }}"),
    "endless output": ("{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}"
                       "{% endfor %}"),
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}


@pytest.mark.parametrize("bomb", BOMBS.values(), ids=BOMBS.keys())
def test_hostile_templates_fail_fast_and_the_child_is_replaced(bomb):
    with ChatTemplate(_bomb_on_request(bomb), timeout_s=2) as template:
        assert template.render(USER) == "ok hi"
        first = template.pid
        start = time.monotonic()
        with pytest.raises(ChatTemplateError) as info:
            template.render([{"role": "user", "content": "bomb"}])
        elapsed = time.monotonic() - start
        assert elapsed < 15, f"{elapsed:.1f} s"
        assert "\n" not in str(info.value)
        assert template.render([{"role": "user", "content": "again"}]) == "ok again"
        if "longer than" in str(info.value):  # killed on time: a fresh child renders now
            assert template.pid != first


def test_endless_loop_is_a_timeout_and_a_new_child():
    with ChatTemplate(_bomb_on_request(HANG), timeout_s=1) as template:
        template.render(USER)
        first = template.pid
        start = time.monotonic()
        with pytest.raises(ChatTemplateError, match=r"took longer than 1 s to render"):
            template.render([{"role": "user", "content": "bomb"}])
        assert 1 <= time.monotonic() - start < 10
        assert template.pid is None  # the hung child was killed
        assert template.render(USER) == "ok hi"
        assert template.pid not in (None, first)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux only")
def test_memory_bomb_hits_the_childs_memory_limit():
    """Nothing intercepts `~`: the child's address-space limit ends it, as a MemoryError in the child."""
    with ChatTemplate(_bomb_on_request(BOMBS["doubling with ~"]), memory_limit_mb=512) as template:
        template.render(USER)
        pid = template.pid
        with pytest.raises(ChatTemplateError, match="ran out of memory"):
            template.render([{"role": "user", "content": "bomb"}])
        assert template.pid == pid  # reported by the child, which lives on
        assert template.render(USER) == "ok hi"


def test_output_limit():
    with ChatTemplate("{% for i in range(1000) %}0123456789{% endfor %}", max_chars=5000) as template:
        with pytest.raises(ChatTemplateError, match="passed 5,000 characters"):
            template.render(USER)
    with ChatTemplate("{% for i in range(400) %}0123456789{% endfor %}", max_chars=5000) as template:
        assert len(template.render(USER)) == 4000


def test_right_nested_power_is_harmless():
    """Jinja's ** is left-associative: 2 ** 10 ** 10 is (2 ** 10) ** 10, which renders."""
    with ChatTemplate("{{ 2 ** 10 ** 10 }} {{ 3 * 4 }} {{ 'ab' * 2 }} {{ '%5.1f' % 2.25 }}") as template:
        assert template.render(USER) == f"{2 ** 100} 12 abab   2.2"


def test_cancel_from_another_thread_stops_a_render():
    with ChatTemplate(_bomb_on_request(HANG), timeout_s=60) as template:
        assert template.render(USER) == "ok hi"
        timer = threading.Timer(0.3, template.cancel)
        timer.start()
        start = time.monotonic()
        with pytest.raises(RenderCancelled, match="cancelled"):
            template.render([{"role": "user", "content": "bomb"}])
        timer.join()
        assert time.monotonic() - start < 5
        assert template.render(USER) == "ok hi"  # a new child
        template.cancel()  # nothing in progress: no effect
        assert template.render(USER) == "ok hi"


def test_cancel_while_the_child_starts():
    with ChatTemplate(HANG, timeout_s=60) as template:
        timer = threading.Timer(0.01, template.cancel)  # likely before the child said it was ready
        timer.start()
        start = time.monotonic()
        with pytest.raises(RenderCancelled):
            template.render(USER)
        timer.join()
        assert time.monotonic() - start < 10


def test_close_from_another_thread_stops_a_render_and_the_child():
    template = ChatTemplate(_bomb_on_request(HANG), timeout_s=60)
    template.render(USER)
    proc = template._child.proc
    timer = threading.Timer(0.3, template.close)
    timer.start()
    with pytest.raises(RenderCancelled, match="closed"):
        template.render([{"role": "user", "content": "bomb"}])
    timer.join()
    assert proc.poll() is not None
    with pytest.raises(ChatTemplateError, match="closed"):
        template.render(USER)


@posix_only
def test_a_child_that_dies_between_renders_is_replaced():
    with ChatTemplate(CHATML) as template:
        template.render(USER)
        os.kill(template.pid, signal.SIGKILL)
        time.sleep(0.2)
        assert template.render(USER).startswith("<|im_start|>user\nhi")


@posix_only
def test_a_child_that_keeps_dying_is_reported_as_a_crash():
    with ChatTemplate(HANG, timeout_s=30) as template:
        stop = threading.Event()

        def killer():  # every child started for this render dies, once it has started up and is rendering
            seen: dict[int, float] = {}
            while not stop.is_set():
                pid = template.pid
                if pid is not None and time.monotonic() - seen.setdefault(pid, time.monotonic()) > 1.0:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            with pytest.raises(ChatTemplateError, match=r"crashed \(killed by SIGKILL\) while rendering"):
                template.render(USER)
        finally:
            stop.set()
            thread.join()


def test_no_child_is_left_after_close():
    psutil = pytest.importorskip("psutil")
    template = ChatTemplate(CHATML)
    assert template.pid is None  # started on the first render only
    template.render(USER)
    pid, proc = template.pid, template._child.proc
    assert pid is not None and psutil.pid_exists(pid)
    assert psutil.Process(pid).ppid() == os.getpid()
    template.close()
    assert proc.poll() is not None and template.pid is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    template.close()  # twice is fine


@pytest.mark.parametrize("messages,match", [
    ("hello", r"not a string; pass a list of dicts such as \[\{\"role\": \"user\""),
    ({"role": "user", "content": "hi"}, "not a single dict"),
    ([], "empty"),
    (["hello"], r"messages\[0\] is str, not a dict"),
    ([{"role": "user"}], r"messages\[0\]\['content'\] is missing"),
    ([{"role": "user", "content": 3}], r"messages\[0\]\['content'\] is int"),
    ([{"role": "user", "content": "a\ud800"}],
     r"messages\[0\]\['content'\] contains a lone surrogate \(U\+D800"),
    ([{"role": "user", "content": "a", "extra": object()}], "not plain data"),
])
def test_bad_messages_are_invalid_option_errors(messages, match):
    template = ChatTemplate(CHATML)
    with pytest.raises(InvalidOptionError, match=match):
        template.render(messages)
    assert template.pid is None  # refused before any child was started
    template.close()


def test_check_template(monkeypatch):
    from edgekit.runtimes import chat_template

    monkeypatch.setattr(chat_template, "DEFAULT_TIMEOUT_S", 1.0)  # 5 s in use: the same path, sooner
    check_template(CHATML)
    # refusing a system message is fine: the sample conversation has none
    check_template("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
                   "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ChatTemplateError, match="syntax error"):
        check_template("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="refused these messages: only one message"):
        check_template("{% if messages | length > 1 %}{{ raise_exception('only one message') }}{% endif %}")
    with pytest.raises(ChatTemplateError, match="took longer than"):
        check_template(HANG)


def test_import_edgekit_does_not_import_jinja2():
    code = "import sys, edgekit, edgekit.runtimes.chat_template; assert 'jinja2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_child_outlives_the_thread_that_started_it():
    """PR_SET_PDEATHSIG fires when the starting *thread* ends: a worker thread must not take the
    child along."""
    with ChatTemplate(CHATML) as template:
        worker = threading.Thread(target=template.render, args=(USER,))
        worker.start()
        worker.join()
        pid = template.pid
        assert pid is not None
        time.sleep(1.0)  # the child would be dead by now
        assert template.pid == pid
        template.render(USER)
        assert template.pid == pid


@posix_only
@pytest.mark.parametrize("from_thread", [False, True], ids=["main-thread", "worker-thread"])
def test_the_child_dies_with_its_parent(from_thread, tmp_path):
    """A parent killed outright (no close(), no atexit) leaves no renderer behind, even one busy rendering."""
    psutil = pytest.importorskip("psutil")
    script = tmp_path / "parent.py"
    script.write_text(f"""
import os, sys, threading, time
from edgekit.runtimes.chat_template import ChatTemplate
template = ChatTemplate({_bomb_on_request(HANG)!r}, timeout_s=600)
def start():
    template.render([{{"role": "user", "content": "hi"}}])
if {from_thread}:
    t = threading.Thread(target=start)
    t.start()
    t.join()
else:
    start()
print(template.pid, flush=True)
template.render([{{"role": "user", "content": "bomb"}}])  # busy when the parent is killed
""")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert psutil.pid_exists(child)
        time.sleep(0.3)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the renderer outlived its parent")
