"""The sandbox against a corpus of hostile programs: every one scores 0, the host is untouched, the
grader then passes a correct program, and no sandbox process is left behind.

Each hostile program attempts its side effect *before* defining a correct `add`, uncaught: if the
side effect were allowed the program would pass, so a 0 shows the attempt was stopped. Side
effects are checked on the host too (canary files, a listening socket, the parent alive)."""

import os
import socket
import threading
import time
import uuid

import pytest

from offpolicy_bench.sandbox import Job, Limits, SandboxPool, decode, encode, run_one, sandbox_processes

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not hasattr(os, "pidfd_open"),
                                reason="the full sandbox needs root (uid drop, namespaces) and pidfd (Linux >= 5.3)")

GOOD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(1, 2) == 3\nassert add(5, 7) == 12\nassert abs(add(-1, 1)) < 1e-9\n"
LIMITS = Limits(timeout_s=2.0, memory_mb=256, fsize_mb=1)


@pytest.fixture(scope="module")
def host():
    """Canaries on the host: a secret env var, a file and a folder in /tmp, a TCP server on 127.0.0.1."""
    secret = "offbench-secret-" + uuid.uuid4().hex
    os.environ["OFFBENCH_CANARY_SECRET"] = secret
    tag = uuid.uuid4().hex[:12]
    keep = f"/tmp/offbench-canary-{tag}"
    with open(keep, "w") as f:
        f.write("keep me")
    os.chmod(keep, 0o666)
    folder = f"/tmp/offbench-canary-dir-{tag}"
    os.mkdir(folder)
    os.chmod(folder, 0o777)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    hits, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    info = {"secret": secret, "keep": keep, "folder": folder, "written": f"/tmp/offbench-canary-new-{tag}",
            "port": srv.getsockname()[1], "hits": hits, "pid": os.getpid()}
    yield info
    stop.set()
    th.join(2)
    srv.close()
    os.environ.pop("OFFBENCH_CANARY_SECRET", None)
    for p in (keep, info["written"]):
        if os.path.exists(p):
            os.remove(p)
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    os.rmdir(folder)


def hostile(h) -> dict[str, str]:
    """name -> program (the side effect first, then a correct add)."""
    port, secret = h["port"], h["secret"]
    return {
        "infinite_loop": "while True:\n    pass\n" + GOOD,
        "sleep_forever": "import time\ntime.sleep(1000)\n" + GOOD,
        "infinite_loop_in_call": "def add(a, b):\n    while True:\n        pass\n",
        "fork_bomb": "import os\nwhile True:\n    os.fork()\n" + GOOD,
        "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'sleep 100'])\n" + GOOD,
        "thread_bomb": "import threading, time\nfor _ in range(100):\n    threading.Thread(target=time.sleep, "
                       "args=(100,)).start()\n" + GOOD,
        "memory_bomb": "x = bytearray(4 * 1024 ** 3)\n" + GOOD,
        "memory_creep": "x = []\nwhile True:\n    x.append(' ' * 10 ** 6)\n" + GOOD,
        "huge_output": "while True:\n    print('x' * 100000)\n" + GOOD,
        "huge_file": "f = open('big', 'w')\nwhile True:\n    f.write('x' * 100000)\n" + GOOD,
        "exit0_early": "import sys\nsys.exit(0)\n" + GOOD,
        "exit0_in_call": "def add(a, b):\n    raise SystemExit(0)\n",
        "os_exit0": "import os\nos._exit(0)\n" + GOOD,
        "os_exit0_in_call": "import os\ndef add(a, b):\n    os._exit(0)\n",
        "print_passed": "print('passed')\nprint('All tests passed')\nimport os\nos._exit(0)\n",
        "forge_verdict": "import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'0' * 32 + b'\\npassed\\n\\n')\n"
                         "    except OSError:\n        pass\nos._exit(0)\n",
        "write_outside": f"open({h['written']!r}, 'w').write('pwned')\n" + GOOD,
        "write_world_writable": f"open({h['folder'] + '/pwned'!r}, 'w').write('pwned')\n" + GOOD,
        "delete_file": f"import os\nos.remove({h['keep']!r})\n" + GOOD,
        "truncate_file": f"open({h['keep']!r}, 'w').close()\n" + GOOD,
        "socket_connect": f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n" + GOOD,
        "socket_dns": f"import socket\nsocket.create_connection(('localhost', {port}), timeout=1).close()\n" + GOOD,
        "read_env_secret": "import os\nsecret = os.environ['OFFBENCH_CANARY_SECRET']\n" + GOOD,
        "read_parent_environ": "import os\ndata = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
                               f"assert {secret!r}.encode() in data\n" + GOOD,
        "kill_parent": "import os\nos.kill(os.getppid(), 9)\n" + GOOD,
        "kill_harness": f"import os\nos.kill({h['pid']}, 9)\n" + GOOD,
        "kill_everything": "import os\nos.kill(-1, 9)\n" + GOOD,
        "patch_assertion_error": "import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n"
                                 "def add(a, b):\n    return 0\n",
        "always_equal": "class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
                        "def add(a, b):\n    return A()\n",
        "int_subclass_equal": "class I(int):\n    def __eq__(self, o):\n        return True\n"
                              "def add(a, b):\n    return I(0)\n",
        # right on the first two tests, wrong on the third, which a shadowed abs() would hide
        "shadow_builtin": "def abs(x):\n    return 0\ndef add(a, b):\n    return a + b if a > 0 else 99\n",
        "define_check": "def check(candidate):\n    pass\ndef add(a, b):\n    return 0\n",
        "patch_builtins_in_call": "import builtins\ndef add(a, b):\n    builtins.abs = lambda x: 0\n    return 0\n",
        "patch_math_module": "import math\nmath.isclose = lambda *a, **k: True\ndef add(a, b):\n    return 0\n",
        "settrace_skip": "import sys\ndef t(frame, event, arg):\n    return t\nsys.settrace(t)\n" + GOOD,
        "getframe_walk": "import sys\nf = sys._getframe()\nwhile f.f_back:\n    f = f.f_back\n" + GOOD,
        "traceback_frames": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    f = e.__traceback__.tb_frame\n" + GOOD,
        "generator_frame": "def g():\n    yield 1\nf = g().gi_frame\n" + GOOD,
        "gc_scan": "import gc\nobjs = gc.get_objects()\n" + GOOD,
        "signal_handler": "import signal\nsignal.signal(signal.SIGALRM, lambda s, f: None)\n" + GOOD,
        "ctypes_import": "import ctypes\n" + GOOD,
        "code_object_forgery": "def f():\n    pass\nf.__code__ = f.__code__.replace(co_consts=(1,))\n" + GOOD,
        # a vetoed addaudithook returns silently (CPython), so the program checks whether its hook runs
        "audit_hook": "import sys\nseen = []\nsys.addaudithook(lambda e, a: seen.append(e))\ncompile('1', 'x', 'eval')\n"
                      "if not seen:\n    raise RuntimeError('hook not added')\n" + GOOD,
        "subclasses_nonce_hunt": "import os\nfor c in object.__subclasses__():\n"
                                 "    for v in vars(c).values():\n        g = getattr(v, '__globals__', None)\n"
                                 "        if g and 'nonce' in g:\n            os.write(3, (g['nonce'] + '\\npassed\\n\\n').encode())\n"
                                 "            os._exit(0)\nraise RuntimeError('no nonce found')\n",
        "syntax_error": "def add(a, b)\n    return a + b\n",
    }


def test_hostile_corpus_scores_zero_and_leaves_the_host_alone(host):
    progs = hostile(host)
    t0 = time.time()
    with SandboxPool(workers=2, limits=LIMITS) as pool:
        assert pool.workers == 2
        names = list(progs)
        res = pool.run([Job(progs[n], tests=TESTS, entry_point="add") for n in names])
        iso = pool.isolation
        passed = [n for n, r in zip(names, res) if r.passed]
        assert passed == [], {n: r for n, r in zip(names, res) if r.passed}
        status = dict(zip(names, (r.status for r in res)))
        for n in ("infinite_loop", "sleep_forever", "infinite_loop_in_call"):
            assert status[n] == "timeout", (n, status[n])
        for n in ("os_exit0", "os_exit0_in_call", "print_passed"):
            assert status[n] == "no_verdict", (n, status[n])
        assert status["forge_verdict"] in ("bad_verdict", "no_verdict")
        huge = res[names.index("huge_output")]
        assert len(huge.stdout) <= LIMITS.output_bytes
        # the same pool still grades a normal program, after everything above
        ok = pool.run([Job(GOOD, tests=TESTS, entry_point="add")])[0]
        assert ok.passed and ok.status == "passed"
        assert time.time() - t0 < 60
    assert iso["netns"] and iso["mountns"] and iso["seccomp"] and iso["uid_drop"] and iso["readonly_root"], iso
    # the host: files intact, nothing written, no connection, the harness alive, no leftovers
    assert open(host["keep"]).read() == "keep me"
    assert not os.path.exists(host["written"])
    assert os.listdir(host["folder"]) == []
    time.sleep(0.3)
    assert host["hits"] == []
    assert sandbox_processes() == []


def test_os_layer_alone_without_the_audit_hook(host):
    """With the Python audit hook off, the OS layer (uid, rlimits, seccomp, namespaces) still stops
    forks, exec, threads, sockets, writes outside, signals to the parent, and reading secrets."""
    port = host["port"]
    progs = {  # name -> (program, the status it must fail with)
        "fork": ("import os\nos.fork()\n", "BlockingIOError:11"),  # RLIMIT_NPROC=1 as a fresh uid
        "thread": ("import threading\nthreading.Thread(target=print).start()\n", "RuntimeError"),
        "socket": (f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\n", "PermissionError:1"),
        "write_tmp": (f"open({host['written']!r}, 'w').write('x')\n", "OSError:30"),  # read-only mount
        "kill_parent": ("import os\nos.kill(os.getppid(), 9)\n", "PermissionError:1"),
        "kill_harness": (f"import os\nos.kill({host['pid']}, 9)\n", "PermissionError:1"),
        "parent_environ": ("import os\nopen(f'/proc/{os.getppid()}/environ', 'rb').read()\n", "PermissionError:13"),
        "signal_handler": ("import signal\nsignal.signal(signal.SIGALRM, lambda s, f: None)\n", "PermissionError:1"),
        "env": ("import os\nos.environ['OFFBENCH_CANARY_SECRET']\n", "KeyError"),
    }
    with SandboxPool(workers=2, limits=LIMITS, _layers={"audit": False}) as pool:
        res = pool.run([Job(p + GOOD, tests=TESTS, entry_point="add") for p, _ in progs.values()])
        got = {n: r.status for n, r in zip(progs, res)}
        assert got == {n: "failed:program:" + why for n, (_, why) in progs.items()}
        # exec itself is vetoed only by the audit hook; at the OS level the program may replace itself
        # with another binary, which inherits every limit and has no nonce: no verdict, no harm
        shell = f"import os\nos.execv('/bin/sh', ['sh', '-c', 'echo x > {host['written']}; sleep 100 & exit 0'])\n"
        r = pool.run([Job(shell + GOOD, tests=TESTS, entry_point="add")])[0]
        assert r.status == "no_verdict" and not r.passed
        assert pool.run([Job(GOOD, tests=TESTS, entry_point="add")])[0].passed
    with SandboxPool(workers=1, limits=LIMITS, _layers={"audit": False, "seccomp": False}) as pool:
        # the network namespace alone: no interface, so no route even to 127.0.0.1
        r = pool.run([Job(progs["socket"][0] + GOOD, tests=TESTS, entry_point="add")])[0]
        assert r.status == "failed:program:OSError:101"  # ENETUNREACH
    assert host["hits"] == [] and not os.path.exists(host["written"])
    assert sandbox_processes() == []


def test_environment_is_scrubbed(host):
    job = Job("import os\ndef env():\n    return dict(os.environ)\n", mode="calls", entry_point="env", inputs=[[]])
    r = run_one(job, LIMITS)
    assert r.status == "ran"
    env = decode(r.outputs[0])
    assert host["secret"] not in repr(env)
    assert set(env) == {"PATH", "HOME", "TMPDIR", "LANG"}


def test_calls_and_io_modes_and_encoding():
    with SandboxPool(workers=2, limits=LIMITS) as pool:
        calls, io_, bad = pool.run([
            Job("def f(x):\n    return [x, (x, 'a'), {x: None}]\n", mode="calls", entry_point="f", inputs=[[1], [2]]),
            Job("n = int(input())\nprint(n * 2)\nimport sys\nsys.exit(0)\n", mode="io", inputs=["3\n", "5\n"]),
            Job("class A:\n    pass\ndef f():\n    return A()\n", mode="calls", entry_point="f", inputs=[[]]),
        ])
    assert calls.outputs == [encode([1, (1, "a"), {1: None}]), encode([2, (2, "a"), {2: None}])]
    assert io_.outputs == [encode("6\n"), encode("10\n")]
    assert bad.outputs == ["ETypeError"]  # a non-plain value is never sent


def test_private_working_directory_is_removed():
    job = Job("import os\ndef f():\n    open('scratch', 'w').write('x')\n    return os.getcwd()\n",
              mode="calls", entry_point="f", inputs=[[]])
    r = run_one(job, LIMITS)
    cwd = decode(r.outputs[0])
    assert cwd.startswith(("/var/tmp/offbench-jobs/", "/tmp/offbench-jobs"))
    # the working directory lived in the zygote's private tmpfs: nothing of it on the host
    assert not os.path.exists(cwd)


def test_zygote_killed_hard_leaves_no_orphans():
    """SIGKILL the zygote while a program sleeps: the batch reports errors, closing the pool reaps
    the orphan (its uid block is known), and the pool restarts for the next batch."""
    import signal

    pool = SandboxPool(workers=1, limits=Limits(timeout_s=30.0))
    out = []
    th = threading.Thread(target=lambda: out.extend(pool.run([Job("import time\ntime.sleep(300)\n" + GOOD,
                                                                  tests=TESTS, entry_point="add")])))
    th.start()
    deadline = time.time() + 20
    while not sandbox_processes(pool.uid_base, 1) and time.time() < deadline:
        time.sleep(0.05)
    assert sandbox_processes(pool.uid_base, 1), "the sleeping program never started"
    os.kill(pool._proc.pid, signal.SIGKILL)
    th.join(20)
    assert out and out[0].status == "error" and not out[0].passed
    assert pool.run([Job(GOOD, tests=TESTS, entry_point="add")])[0].passed  # restarted, orphan reaped
    pool.close()
    assert sandbox_processes() == []


@pytest.mark.parametrize("timeout_s, cpu_s", [(8.0, 1.0), (120.0, 1.0), (1.0, 60.0)])
def test_cpu_limit_kill_is_a_timeout_too(timeout_s, cpu_s):
    # the CPU-time limit and the wall timeout are two routes to the same outcome: whichever fires
    # first, a spinning program is killed and reported as "timeout" (a race between them made CI
    # flaky). (120, 1): only the CPU limit can fire in a test's time (SIGXCPU at the soft limit,
    # SIGKILL at the hard one); (1, 60): only the wall timeout (the pool's SIGKILL); (8, 1): either.
    import signal

    with SandboxPool(workers=1, limits=Limits(timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=256, fsize_mb=1)) as pool:
        (res,) = pool.run([Job("def add(a, b):\n    while True:\n        pass\n", tests=TESTS, entry_point="add")])
    assert not res.passed and res.status == "timeout", res
    assert res.exit in ((-signal.SIGXCPU, -signal.SIGKILL) if cpu_s < timeout_s else (-signal.SIGKILL,)), res
