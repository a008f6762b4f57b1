"""segjax's speed benchmarks: each a module run from the repository root with ``python -m``.

    python -m benchmarks.train_step --model fcn_resnet50 --batch 4 --size 256 --steps 3 \\
        [--compare torchvision --torch-python PY] [--conv-impl gemm|xla] [--json]
                                  # train / eval throughput, MFU, memory, compile time of one
                                  # model, side by side with torchvision (docs/PERFORMANCE.md)
    python -m benchmarks.torchvision_step --model fcn_resnet50
                                  # the torchvision half of that comparison, alone (JSON line)
    python -m benchmarks.profile_step --model fcn_resnet50
                                  # where that train step spends its time, HLO op by op
    python -m benchmarks.conv_impl [--torch-python PY] [--cases d12,dw]
                                  # one conv forward+backward: XLA vs segjax's GEMMs vs torch
    python -m benchmarks.maskrcnn_inference [--torch-python PY] [--height 480 --width 640]
                                  # Mask R-CNN R50-FPN inference of one image: segjax's jitted
                                  # forward + pasting vs torchvision eval(); latency, memory
    python -m benchmarks.dilated_conv      # atrous conv vs the same conv with a zero-dilated kernel
    python -m benchmarks.transposed_conv   # learned upsampling: transposed conv vs resize + conv
    python -m benchmarks.sliding_window    # peak memory / time of sliding-window prediction
    python -m benchmarks.crf               # dense CRF wall time and memory
    python -m benchmarks.input_pipeline    # training input pipeline images/s per core

``--help`` of each lists its options; the module docstrings say what is measured and how.
Shared pieces (timers, peak memory, child interpreters, the train-step recipe) are in
:mod:`benchmarks.common`. Nothing here is installed with segjax.
"""
