"""The one `format -> writer` registry, and the spec, CLI and form facts that read it."""

from typing import get_args

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from obow.cli import main
from obow.cli.export import convert_command
from obow.config.export import ExportSpec
from obow.export.registry import EXPORTERS
from obow.io.export_formats import EXPORT_FORMATS, EXPORT_OPTIONS, ExportFormatName


def test_every_format_has_one_writer_and_the_spec_offers_exactly_those():
    assert list(EXPORTERS) == list(EXPORT_FORMATS)
    assert set(get_args(ExportFormatName)) == set(EXPORT_FORMATS)
    choices = next(p for p in convert_command.params if p.name == "fmt").type.choices
    assert list(choices) == list(EXPORT_FORMATS)
    for fmt in EXPORT_FORMATS.values():
        assert set(fmt.options) <= set(EXPORT_OPTIONS) <= set(ExportSpec.model_fields)


def test_the_facts_the_api_and_the_form_read():
    facts = ExportSpec.export_formats()
    assert facts["torchvision"]["options"] == ["no_fc", "plain"]
    assert facts["caffe2"]["options"] == ["rgb2bgr"]
    assert facts["detectron2"]["options"] == [] and facts["safetensors"]["options"] == []
    stock = {name for name, f in facts.items() if f["needs_stock_resnet"]}
    assert stock == {"torchvision", "caffe2", "detectron2"}  # safetensors holds a small-stem or narrow backbone
    assert facts["safetensors"]["suffixes"] == [".safetensors"]
    assert ExportSpec.model_json_schema()["x-export-formats"] == facts  # what GET /kinds shows the form


@pytest.mark.parametrize(("fmt", "option"), [("caffe2", "plain"), ("torchvision", "rgb2bgr"),
                                             ("safetensors", "no_fc"), ("detectron2", "rgb2bgr"),
                                             ("caffe2", "no_fc")])
def test_an_option_the_format_ignores_is_an_error_located_at_that_option(fmt, option):
    with pytest.raises(ValidationError) as err:
        ExportSpec(checkpoint="c.pt", format=fmt, **{option: True})
    (error,) = err.value.errors()
    assert error["loc"] == (option,)
    assert f"does not apply to format '{fmt}'" in error["msg"]


def test_options_the_format_honours_validate():
    assert ExportSpec(checkpoint="c.pt", format="torchvision", plain=True, no_fc=True).plain
    assert ExportSpec(checkpoint="c.pt", format="caffe2", rgb2bgr=True).rgb2bgr
    # False is every option's default and means "not asked for": it fits every format
    assert ExportSpec.model_validate({"checkpoint": "c.pt", "format": "safetensors", "plain": False,
                                      "no_fc": False, "rgb2bgr": False}).format == "safetensors"


def test_changing_the_format_later_is_checked_too():
    spec = ExportSpec(checkpoint="c.pt", plain=True)
    with pytest.raises(ValidationError, match="plain does not apply to format 'caffe2'"):
        spec.format = "caffe2"


def test_the_cli_refuses_an_option_of_another_format(tmp_path):
    source = tmp_path / "c.pt"
    source.write_bytes(b"x")
    runner = CliRunner()
    out = runner.invoke(main, ["convert", "--checkpoint", str(source), "--format", "safetensors", "--no-fc"])
    assert out.exit_code == 2 and out.output.startswith("error: --no-fc applies to --format torchvision only")
    out = runner.invoke(main, ["convert", "--checkpoint", str(source), "--format", "caffe2", "--plain"])
    assert out.exit_code == 2 and out.output.startswith("error: --plain applies to --format torchvision only")
