"""Object detection and region extraction for MGMCF (object-level clues from meme images).

* :mod:`memeops.vision.detect`: one :class:`~memeops.vision.detect.Detector` interface over three
  backends (ultralytics YOLO, torchvision Faster R-CNN, a fixed grid), normalised
  :class:`~memeops.vision.detect.Detections`, detector folders (``detector_config.json`` + weights)
  and detection metrics (mAP, key-object recall@k);
* :mod:`memeops.vision.regions`: region *views* (which boxes to keep, how to degrade them, crop
  size), crops, and the sharded :class:`~memeops.vision.regions.RegionStore` the models read;
* :mod:`memeops.vision.yolo`: the ultralytics side (offline set-up, model yaml, training on
  YOLO-format data); imported lazily, so the rest works where ultralytics is not installed.

See docs/regions.md.
"""
