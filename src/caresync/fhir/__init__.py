"""FHIR R4 in and out: a record as a Bundle, and Bundles or NDJSON into records.

The mapping is pure (:mod:`~caresync.fhir.export` out, :mod:`~caresync.fhir.imports`
in, over :class:`Chart`, the clinical content both exchange); reading a file
(:mod:`~caresync.fhir.reading`) validates every resource with ``fhir.resources``
(the ``fhir`` extra: ``pip install "caresync[fhir]"``); :mod:`~caresync.fhir.shell`
exports from and imports into a :class:`~caresync.replica.Replica`. What maps
where, and what does not, is in docs/fhir.md.
"""

from caresync.fhir.chart import Addendum, Chart, ChartEntry, chart_of, contested_paths
from caresync.fhir.export import bundle_bytes, bundle_for_record, bundle_of_chart
from caresync.fhir.imports import AppliedChart, ImportPlan, apply_chart, charts_from_resources
from caresync.fhir.reading import MAX_FILE_BYTES, MAX_RESOURCES, FoundResource, read_fhir
from caresync.fhir.shell import ImportReport, export_record, import_fhir, plan_import
from caresync.fhir.validation import INSTALL_HINT, require_models, validate_resource
from caresync.fhir.vocabulary import FHIR_VERSION, resource_id

__all__ = [
    "FHIR_VERSION",
    "INSTALL_HINT",
    "MAX_FILE_BYTES",
    "MAX_RESOURCES",
    "Addendum",
    "AppliedChart",
    "Chart",
    "ChartEntry",
    "FoundResource",
    "ImportPlan",
    "ImportReport",
    "apply_chart",
    "bundle_bytes",
    "bundle_for_record",
    "bundle_of_chart",
    "chart_of",
    "charts_from_resources",
    "contested_paths",
    "export_record",
    "import_fhir",
    "plan_import",
    "read_fhir",
    "require_models",
    "resource_id",
    "validate_resource",
]
