"""The workspace roots and the path check every tab applies to what a user types."""

import os
import shutil

import pytest

from acestep.ui.context import WORKSPACE_FOLDERS, AppContext, PathRefused, Workspace


@pytest.fixture
def workspace(tmp_path):
    return Workspace(tmp_path / "ws", tmp_path / "models", (tmp_path / "music",)).create()


def test_create_makes_the_folders_and_the_roots_are_workspace_models_and_data_roots(workspace, tmp_path):
    assert all((workspace.root / name).is_dir() for name in WORKSPACE_FOLDERS)
    assert workspace.checkpoints.is_dir()
    assert workspace.roots() == (tmp_path / "ws", tmp_path / "models", tmp_path / "music")
    assert workspace.jobs == tmp_path / "ws" / "runs" / ".jobs"


def test_relative_paths_are_taken_from_the_workspace_and_roots_are_accepted(workspace, tmp_path):
    assert workspace.check_path("audio/songs") == tmp_path / "ws" / "audio" / "songs"
    assert workspace.check_path(str(tmp_path / "models" / "vae")) == tmp_path / "models" / "vae"
    assert workspace.check_path(tmp_path / "music") == tmp_path / "music"


@pytest.mark.parametrize("text", ["/etc/passwd", "../outside", "audio/../../escape", "~"])
def test_paths_outside_the_roots_are_refused_with_the_fix(workspace, text):
    with pytest.raises(PathRefused, match="outside the folders this app may use") as refused:
        workspace.check_path(text)
    assert "--data-root" in str(refused.value)


def test_a_link_out_of_the_workspace_is_refused(workspace, tmp_path):
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", workspace.audio / "link")
    with pytest.raises(PathRefused):
        workspace.check_path("audio/link/file.wav")


def test_missing_and_empty_paths(workspace):
    with pytest.raises(PathRefused, match="does not exist"):
        workspace.check_path("audio/none", must_exist=True, what="audio folder")
    with pytest.raises(PathRefused, match="No audio folder given"):
        workspace.check_path("  ", what="audio folder")


def test_the_context_shares_one_job_folder(workspace):
    first, second = AppContext.create(workspace), AppContext.create(workspace)
    assert first.jobs.root == second.jobs.root == workspace.jobs


def test_dit_names_lists_the_transformers_and_complete_only_leaves_out_one_missing_weights(tmp_path,
                                                                                         tiny_checkpoints):
    models = tmp_path / "models"
    shutil.copytree(tiny_checkpoints, models)
    half = models / "acestep-v15-base"  # a download stopped before the weights arrived
    half.mkdir()
    shutil.copy(models / "acestep-v15-turbo" / "config.json", half / "config.json")
    workspace = Workspace(tmp_path / "ws", models).create()
    assert workspace.dit_names() == ["acestep-v15-base", "acestep-v15-turbo"]  # not the VAE or the text encoder
    assert workspace.dit_names(complete_only=True) == ["acestep-v15-turbo"]


def test_a_tensors_folder_is_one_that_holds_the_preprocessors_manifest(tmp_path):
    from acestep.preprocess.manifest import MANIFEST_NAME
    from acestep.ui.context import holds_tensors

    assert not holds_tensors(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{}")
    assert holds_tensors(tmp_path) and not holds_tensors(tmp_path / "missing")
