"""methods/, corrections/ and tasks/ install as offpolicy_bench.methods / .corrections / .tasks, in editable
and wheel installs."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = ("import offpolicy_bench, offpolicy_bench.methods as m, offpolicy_bench.tasks as t;"
         "import offpolicy_bench.corrections as c;"
         "from offpolicy_bench import get_method, get_task; get_method('vespo'); get_task('math');"
         "from offpolicy_bench.correction import get_correction; get_correction('token_tis');"
         "import importlib.util as u; print(m.__file__); print(t.__file__); print(c.__file__);"
         "print(all(u.find_spec(x) is None for x in ('methods', 'tasks', 'corrections')))")


def run_check(tmp_path, env=None):
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_editable_install_maps_top_level_folders(tmp_path):
    methods_file, tasks_file, corrections_file, no_generic = run_check(tmp_path)
    assert no_generic == "True"
    assert os.path.realpath(methods_file) == os.path.join(ROOT, "methods", "__init__.py")
    assert os.path.realpath(tasks_file) == os.path.join(ROOT, "tasks", "__init__.py")
    assert os.path.realpath(corrections_file) == os.path.join(ROOT, "corrections", "__init__.py")


def test_wheel_contains_mapped_packages_only(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), ROOT],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    for must in ("offpolicy_bench/methods/vespo.py", "offpolicy_bench/methods/token_clip.py",
                 "offpolicy_bench/corrections/rollout.py", "offpolicy_bench/tasks/math/synthetic.py", "offpolicy_bench/tasks/code/synthetic.py",
                 "offpolicy_bench/metrics/pass_at_k/pass_at_k.py", "offpolicy_bench/presets/paper-cpu.yaml",
                 "offpolicy_bench/trainer.py"):
        assert must in names, must
    assert not [n for n in names if n.split("/")[0] in ("methods", "tasks", "corrections", "tests")]
    site = tmp_path / "site"
    zipfile.ZipFile(tmp_path / wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    methods_file, tasks_file, corrections_file, no_generic = run_check(tmp_path, env)
    assert all(f.startswith(str(site)) for f in (methods_file, tasks_file, corrections_file)) and no_generic == "True"
