"""The offline evaluation suite (`featurescope eval --suite`, docs/evaluation.md): tasks built only from what
ships with the package or the Python install.

`datasets` builds labelled texts from the embedded corpora (held-out documents only); `pooled` runs them through
the model and the SAE; `sparse_probing` fits k-sparse probes on SAE features against a dense probe on the
residual stream, with SAEBench's metric names.
"""
