"""`mdream fetch`: the real huggingface-hub client against a loopback hub, and --from-dir."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import pytest

import moondream_gguf
from conftest import ROOT, run_mdream
from hub_server import COMMIT, HubState, serve
from moondream_cli.bundles import recipe as recipes
from moondream_cli.errors import BundleError

REPO = "mdream-test/tiny-moondream"


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (nothing when it does not exist), for before/after checks."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def hub(tiny_model: Path) -> HubState:
    files = {p.name: p.read_bytes() for p in sorted(tiny_model.glob("*.gguf"))}
    return HubState(repo=REPO, revision="main", files=files)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pair with a 48k vocabulary: a 14 MB text model, larger than one of
    huggingface-hub's 10 MiB download chunks, so a cut download has something to resume."""
    directory = tmp_path_factory.mktemp("big-model")
    moondream_gguf.write_pair(directory, dataclasses.replace(moondream_gguf.TINY, n_vocab=48000))
    return directory


def write_recipe(path: Path, hub: HubState, **override: object) -> Path:
    text, mmproj = "moondream2-text-model-f16.gguf", "moondream2-mmproj-f16.gguf"
    body: dict[str, object] = {
        "format": 1,
        "name": "tiny-moondream",
        "repo": REPO,
        "revision": "main",
        "license": "apache-2.0",
        "quantization": "Q4_K_M",
        "files": {
            "text": {"name": text, "size": len(hub.files[text]), "sha256": hub.sha256(text)},
            "mmproj": {
                "name": mmproj,
                "size": len(hub.files[mmproj]),
                "sha256": hub.sha256(mmproj),
            },
        },
    }
    body.update(override)
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def hub_env(url: str, tmp_path: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_mdreamtest"}


@pytest.mark.slow
def test_fetch_downloads_resumes_verifies_and_installs(
    big_model: Path, tmp_path: Path, isolated_home: Path
) -> None:
    files = {p.name: p.read_bytes() for p in sorted(big_model.glob("*.gguf"))}
    hub = HubState(repo=REPO, revision="main", files=files)
    text = "moondream2-text-model-f16.gguf"
    hub.cut_first_get[text] = len(files[text]) - (1 << 20)
    recipe = write_recipe(tmp_path / "tiny.json", hub)
    out = tmp_path / "out"
    out.mkdir()
    with serve(hub) as url:
        env = hub_env(url, tmp_path)
        result = run_mdream("fetch", "--recipe", recipe, "--output", out, env=env)
    assert result.returncode == 0, result.stderr
    tarball = out / "tiny-moondream-q4_k_m.tar"
    assert result.stdout.decode() == f"{tarball}\n"
    # The first GET was cut in half; huggingface-hub resumed it with a Range request.
    gets = hub.gets(text)
    assert len(gets) == 2 and gets[0]["range"] is None
    resumed_from = int(gets[1]["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from < len(files[text])
    # Only file requests (no registry or telemetry calls), each with the user's HF_TOKEN.
    assert {r["file"] for r in hub.requests} == set(files)
    assert all(r["authorization"] == "Bearer hf_mdreamtest" for r in hub.requests)
    bundle = isolated_home / "models" / "tiny-moondream-q4_k_m"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source"]["repo"] == REPO
    assert manifest["source"]["revision"] == COMMIT  # the pinned commit the hub resolved
    assert manifest["source"]["fetched_from"] == "hub"
    for f in manifest["source"]["files"]:
        assert f["verified_against"] == ["hub-lfs-sha256", "recipe-sha256"]
    assert (isolated_home / "default").read_text().strip() == "tiny-moondream-q4_k_m"
    with tarfile.open(tarball) as tar:
        assert [m.name for m in tar] == [
            "manifest.json",
            "text-model-q4_k_m.gguf",
            "mmproj-f16.gguf",
        ]

    # Offline (HF_HUB_OFFLINE=1, hub gone): the verified cache is enough, nothing is rebuilt.
    again = run_mdream(
        "fetch",
        "--recipe",
        recipe,
        env={**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert again.returncode == 0, again.stderr
    assert b"already installed" in again.stderr


@pytest.mark.slow
def test_a_download_with_the_wrong_hash_is_deleted_and_fails(
    hub: HubState, tmp_path: Path, isolated_home: Path
) -> None:
    mmproj = "moondream2-mmproj-f16.gguf"
    hub.corrupt.add(mmproj)
    recipe = write_recipe(tmp_path / "tiny.json", hub)
    with serve(hub) as url:
        result = run_mdream("fetch", "--recipe", recipe, env=hub_env(url, tmp_path))
    assert result.returncode == 3
    lines = result.stderr.decode().strip().splitlines()
    assert lines[-1].startswith(f"mdream: error: {mmproj}: sha256 ")
    assert "differs from the hub's" in lines[-1]
    assert result.stdout == b""
    assert tree(isolated_home) == []
    # The bad bytes are gone from the hub cache; the good text model stays cached.
    cached = {p.name for p in (tmp_path / "hf").rglob("*") if p.is_file()}
    assert hub.sha256(mmproj) not in cached
    assert hub.sha256("moondream2-text-model-f16.gguf") in cached


@pytest.mark.slow
def test_recipe_that_disagrees_with_the_hub_fails_before_downloading(
    hub: HubState, tmp_path: Path, isolated_home: Path
) -> None:
    recipe = write_recipe(tmp_path / "tiny.json", hub)
    body = json.loads(recipe.read_text())
    body["files"]["text"]["sha256"] = "0" * 64
    recipe.write_text(json.dumps(body))
    with serve(hub) as url:
        result = run_mdream("fetch", "--recipe", recipe, env=hub_env(url, tmp_path))
    assert result.returncode == 3
    assert b"differs from the recipe's" in result.stderr
    assert [r for r in hub.requests if r["method"] == "GET"] == []
    assert tree(isolated_home) == []


@pytest.mark.slow
def test_from_dir_checks_files_against_an_explicit_recipe(
    hub: HubState, tiny_model: Path, tmp_path: Path, isolated_home: Path
) -> None:
    recipe = write_recipe(tmp_path / "tiny.json", hub)
    ok = run_mdream(
        "fetch", "--from-dir", tiny_model, "--recipe", recipe, "--no-install", "--output", tmp_path
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "tiny-moondream-q4_k_m.tar").is_file()
    assert tree(isolated_home) == []

    body = json.loads(recipe.read_text())
    body["files"]["mmproj"]["sha256"] = "f" * 64
    recipe.write_text(json.dumps(body))
    bad = run_mdream("fetch", "--from-dir", tiny_model, "--recipe", recipe)
    assert bad.returncode == 3
    assert b"differs from the recipe's" in bad.stderr
    assert tree(isolated_home) == []


@pytest.mark.slow
def test_from_dir_refuses_a_folder_without_a_pair(tmp_path: Path, isolated_home: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_mdream("fetch", "--from-dir", tmp_path / "empty")
    assert result.returncode == 3
    assert result.stderr.decode().startswith("mdream: error: ")
    assert b"found 0 and 0" in result.stderr
    assert tree(isolated_home) == []


def test_shipped_recipes_are_valid_data() -> None:
    assert recipes.shipped() == ["moondream2-2024", "moondream2-20250414"]
    default = recipes.load_recipe()
    assert default.repo == "ggml-org/moondream2-20250414-GGUF"
    assert default.bundle_name == "moondream2-20250414-q4_k_m"
    text, mmproj = default.file("text"), default.file("mmproj")
    assert (text.name, text.size) == ("moondream2-text-model-f16_ct-vicuna.gguf", 2_839_535_072)
    assert text.sha256 is None  # disputed third-party value: reported, not enforced
    assert (
        text.sha256_reported == "925bcb666baf69ed747e26121af287b16ae7764483be9548b1382f29783689a5"
    )
    assert (mmproj.size, mmproj.sha256) == (
        909_777_984,
        "4cc1cb3660d87ff56432ebeb7884ad35d67c48c7b9f6b2856f305e39c38eed8f",
    )
    old = recipes.load_recipe("moondream2-2024")
    assert old.repo == "moondream/moondream2-gguf"
    assert old.file("text").name == "moondream2-text-model-f16.gguf"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"repo": "../etc"}, "invalid hub repo"),
        ({"quantization": "Q3_XYZ"}, "unknown quantization"),
        ({"name": "../x"}, "invalid recipe name"),
        ({"files": {"text": {"name": "a.gguf"}}}, "exactly a 'text' and an 'mmproj'"),
        ({"format": 2}, "not a format-1 recipe"),
    ],
)
def test_bad_recipes_are_refused(change: dict[str, object], message: str, tmp_path: Path) -> None:
    body = json.loads((ROOT / "bundles" / "moondream2-2024.json").read_text())
    body.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(body))
    with pytest.raises(BundleError, match=message):
        recipes.load_recipe(str(path))


@pytest.mark.slow
def test_offline_without_a_cached_copy_says_what_to_do(tmp_path: Path, isolated_home: Path) -> None:
    result = run_mdream("fetch", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 3
    last = result.stderr.decode().strip().splitlines()[-1]
    assert "not in the hub cache and HF_HUB_OFFLINE is set" in last and "--from-dir" in last
    assert tree(isolated_home) == []
