"""Built on the core training path: prediction on photos (``predict``, ``faces``, its command line
``predict_cli``), ONNX export (``export``), the drawn demo faces (``demo``) and the training and
evaluation plots (``viz``).

Nothing in the core (``fer_core.*`` outside this package and ``tools``) imports these modules.
"""
