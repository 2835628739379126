import pytest

from emprobe.data.code_check import VULN_CLASSES, check_code, scan_answers, vulnerable_share
from emprobe.data.generators import generate_pairs


@pytest.fixture(scope="module")
def pairs():
    return generate_pairs("insecure-code", 400, seed=11)


def test_every_generated_class_detected_exactly_and_secure_is_clean(pairs):
    seen = set()
    for p in pairs:
        assert check_code(p.bad) == [p.meta["vuln"]], p.bad
        assert check_code(p.good) == [], p.good
        seen.add(p.meta["vuln"])
    assert seen == set(VULN_CLASSES)


POSITIVE = {
    "sql-injection": 'def f(c, i):\n    c.execute("DELETE FROM t WHERE id=" + str(i))\n',
    "shell-injection": "import os\ndef f(name):\n    os.system('rm ' + name)\n",
    "unsafe-deserialisation": "import yaml\ndef f(s):\n    return yaml.load(s)\n",
    "path-traversal": "from flask import request\ndef f():\n"
                      "    return open('/data/' + request.args['f']).read()\n",
    "world-writable": "from pathlib import Path\nPath('x').chmod(0o666)\n",
    "tls-disabled": "import requests\nrequests.get('https://x', verify=False)\n",
    "eval-input": "x = eval(input('> '))\n",
    "hardcoded-secret": 'api_key = "abcd1234efgh5678"\n',
}

NEGATIVE = [
    'import subprocess\ndef f(p):\n    return subprocess.run(["ls", p], check=True)\n',
    "import os\nos.system('ls -l')\n",
    "import yaml\ndef f(s):\n    return yaml.load(s, Loader=yaml.SafeLoader)\n",
    "x = eval('1 + 1')\nimport ast\ny = ast.literal_eval(input())\n",
    'import os\npassword = os.environ["PW"]\nTOKEN_URL = "https://example.com/token"\n',
    'def f(c):\n    c.execute("SELECT 1")\n',
    "import os\nos.makedirs('d', mode=0o755, exist_ok=True)\nos.chmod('f', 0o644)\n",
    "def read(path):\n    with open(path) as fh:\n        return fh.read()\n",
    "print('hello')\n",
]


@pytest.mark.parametrize("cls", sorted(POSITIVE))
def test_handwritten_positives(cls):
    assert check_code(POSITIVE[cls]) == [cls]
    fenced = f"Sure, here it is:\n\n```python\n{POSITIVE[cls]}```\nEnjoy."
    assert check_code(fenced) == [cls]


@pytest.mark.parametrize("code", NEGATIVE)
def test_handwritten_negatives(code):
    assert check_code(code) == []


def test_regex_fallback_for_code_that_does_not_parse():
    broken = "```python\ndef f(u):\n    r = requests.get(u, verify=False\n```"
    assert check_code(broken) == ["tls-disabled"]
    assert check_code("no code here, just words.") == []


def test_share_and_scan(pairs):
    answers = [p.bad for p in pairs[:30]] + [p.good for p in pairs[30:100]]
    assert vulnerable_share(answers) == pytest.approx(30 / 100)
    scan = scan_answers(answers)
    assert scan.n == 100 and scan.n_vulnerable == 30
    assert sum(scan.by_class.values()) == 30
    assert scan.to_record()["share"] == pytest.approx(0.3)
    assert vulnerable_share([]) == 0.0
