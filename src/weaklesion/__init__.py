"""weaklesion: find and count lesions in 2D and 3D images from weak labels.

The post-processing core works on plain arrays and needs no training code:

- :mod:`weaklesion.targets` turns points into Gaussian heatmaps and distance maps;
- :mod:`weaklesion.counting` turns probability maps into exact count distributions;
- :mod:`weaklesion.detection` turns maps into lesion detections;
- :mod:`weaklesion.metrics` scores detections, counts and probabilities.
"""

__version__ = "0.1.0"
