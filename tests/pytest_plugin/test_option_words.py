"""``--pplgate-x VALUE`` in two words made pytest miss the project's pytest.ini: refused with the one-word fix."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    pytester.mkdir("tests")
    pytester.mkdir("other")
    (pytester.path / "tests" / "test_a.py").write_text("def test_a():\n    pass\n")
    (pytester.path / "other" / "test_b.py").write_text("def test_b():\n    pass\n")
    return pytester


def test_a_value_outside_the_project_in_two_words_is_refused(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("cache-outside")
    # a subprocess: the plugin loads from its entry point, after pytest looked for its configuration (as
    # for a user; `-p pplgate.plugin` would register the option before that search)
    res = project.runpytest_subprocess("--pplgate-cache-dir", str(outside))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    err = res.stderr.str()
    assert f"'--pplgate-cache-dir {outside}': pytest read {outside} as a test path" in err
    assert f"--pplgate-cache-dir={outside}" in err


def test_one_word_and_values_inside_the_project_keep_the_configuration(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("cache-outside")
    project.runpytest_subprocess(f"--pplgate-cache-dir={outside}").assert_outcomes(passed=1)
    project.runpytest_subprocess("--pplgate-report", "out").assert_outcomes(passed=1)  # testpaths kept
