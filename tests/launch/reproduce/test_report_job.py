"""The report job at the end of a table's chain writes the table and its figure: Table 6, a value table, gets its
runs' training curves (Fig. 6's) as the PNG the docs promise."""

from __future__ import annotations

from PIL import Image

from launch.reproduce.report_job import ReportJob
from pipeline.run.layout import RunsFolder
from pipeline.tables.spec import planned_runs
from tests.support import REPO
from tests.support.report_runs import write_run

TABLE6 = REPO / "configs" / "tables" / "table6.yaml"


def test_table6s_report_job_writes_its_figure(tmp_path):
    # W&B off in the runs' configs: the job logs its W&B table in their mode (here none).
    planned = planned_runs(TABLE6, tmp_path, extra_overrides=("logging.wandb_mode=disabled",))
    runs = {(run.label, run.seed): run for run in planned}
    write_run(runs[("ResNet-20", 0)], final_error=8.1)
    write_run(runs[("ResNet-110", 0)], final_error=6.5)

    written = ReportJob(TABLE6, tmp_path)()

    reports = RunsFolder(tmp_path).reports
    assert written == [str(reports / "table6.md"), str(reports / "table6.png")]
    assert "![Table 6: CIFAR-10 test error (%)](table6.png)" in (reports / "table6.md").read_text()
    with Image.open(reports / "table6.png") as image:
        assert image.format == "PNG"
