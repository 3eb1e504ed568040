"""The report: results/report.md, summary.json, summary.csv and figures/ from the study's JSONs.

Data first: the findings are computed as records, written to summary.json, and the markdown is
rendered from those records last, so tests check numbers, not sentences.

    cli.py          python -m pipeline report: reads the inputs, then build -> write -> render
      load.py       bench JSONs, verification, cost model, baselines -> Cell records
      verify.py     every cell against the single-rank reference of its dtype, at the dtype's tolerance
                    (also python -m pipeline verify)
      summary.py    build(): every section's records in one dict; summary.json and summary.csv
        answers.py      the first screen: fastest configuration per prompt length, dtype and phase
        dtypes.py       per dtype: our fastest 1-rank cell, its distance from float32, the baselines,
                        ranks and ceilings comparisons beside it
        tables.py       per-cell tables (rendering the "cells" rows, which are the CSV's)
        findings.py     ratios and counts across cells, the seed's claims beside them
        baselines.py    HF transformers on the same checkpoint
        resources.py    communication, roofline, memory
        long_context.py long prompts
        costmodel.py    the cost model's calibration, errors and predicted curves
        appendix.py     the machine, the configuration, the provenance
        comparisons.py  back-to-back comparisons (results/compare/*.json)
      document.py   the markdown, from the summary records only
      figures.py    matplotlib figures beside the report
      fmt.py        number formatting and markdown tables

It reads JSON only: nothing here imports pipeline.engine or pipeline.study.
"""
