"""weaklesion: find and count lesions in 2D and 3D images from weak labels.

The post-processing core works on plain arrays and needs no training code:

- :mod:`weaklesion.targets` turns points into Gaussian heatmaps and distance maps;
- :mod:`weaklesion.counting` turns probability maps into exact count distributions;
- :mod:`weaklesion.detection` turns maps into lesion detections;
- :mod:`weaklesion.metrics` scores detections, counts and probabilities.

Above the core, each layer imports only from those below it: :mod:`weaklesion.data`
and :mod:`weaklesion.models`; :mod:`weaklesion.config` and :mod:`weaklesion.run` (a run
folder: configuration, weights, operating point); :mod:`weaklesion.training`,
:mod:`weaklesion.inference` and :mod:`weaklesion.uncertainty`; the tools
(:mod:`weaklesion.tuning`, :mod:`weaklesion.compare`, :mod:`weaklesion.report`,
:mod:`weaklesion.bench`); and the command, :mod:`weaklesion.cli`.
"""

__version__ = "0.1.0"
