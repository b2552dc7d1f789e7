"""The researcher's loop on a real SAE: feature statistics over a corpus, labels from
Neuronpedia, search (by label, by contrast, by decoder neighbours) and strength calibration by
a sweep. Each module is one step; the CLI, the Python API and the server call the same
functions."""
