"""The long results table (docs/design.md §6): one row per (method, attack, seed, phase, step, eval,
judge, metric) with its confidence interval, n, direction and provenance.

    rows     a cell's rows, read from its finished stages, written as its table
    stats    a metric's value, standard error, bootstrap CI and Wilson interval
    schema   the declared columns and types; write, read and load tables
    views    the current rows, before/after pairs, filters, summary columns
    tables   rich tables on screen, Markdown / CSV / Parquet export

The names below are the package's interface; import them from ``forgetbench.results``.
"""

from forgetbench.results.rows import (
    cell_rows,
    judge_provenance,
    protocol,
    stage_provenance,
    table_name,
    write_cell_table,
)
from forgetbench.results.schema import (
    REQUIRED,
    ROW_KEY,
    SCHEMA_VERSION,
    check_frame,
    load_results,
    read_table,
    schema_types,
    sort_rows,
    write_table,
)
from forgetbench.results.stats import Z95, bootstrap_interval, metric_row, wilson_interval
from forgetbench.results.tables import (
    FORMATS,
    SUFFIXES,
    before_after_table,
    export,
    matrix_table,
    print_run_tables,
    print_table,
    steps_table,
    to_markdown,
)
from forgetbench.results.views import (
    before_after,
    current,
    filter_results,
    interval,
    select_columns,
    summary_columns,
    with_interval,
)

__all__ = [
    "FORMATS",
    "REQUIRED",
    "ROW_KEY",
    "SCHEMA_VERSION",
    "SUFFIXES",
    "Z95",
    "before_after",
    "before_after_table",
    "bootstrap_interval",
    "cell_rows",
    "check_frame",
    "current",
    "export",
    "filter_results",
    "interval",
    "judge_provenance",
    "load_results",
    "matrix_table",
    "metric_row",
    "print_run_tables",
    "print_table",
    "protocol",
    "read_table",
    "schema_types",
    "select_columns",
    "sort_rows",
    "stage_provenance",
    "steps_table",
    "summary_columns",
    "table_name",
    "to_markdown",
    "wilson_interval",
    "with_interval",
    "write_cell_table",
    "write_table",
]
