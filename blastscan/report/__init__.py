"""What a comparison run reads as: results and their ranking (:mod:`~blastscan.report.results`), the
written report in Markdown and HTML (:mod:`~blastscan.report.document`) with its figures
(:mod:`~blastscan.report.figures`), feature tables (:mod:`~blastscan.report.table`) and contact sheets of
cells with their masks (:mod:`~blastscan.report.masks`)."""
