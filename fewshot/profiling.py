"""Where a compiled meta-iteration spends its time, by kind of operation and convolution layer.

`profile` runs a step under TensorFlow's profiler and reads the trace (the XPlane protocol buffer
the profiler writes): every executed operation's duration, named as in the step's graph, whose
shapes tell the convolution layers apart. TensorFlow runs independent operations side by side on
its inter-op threads, so operation times add up to more than the wall time; shares are of their sum.
"""

import collections
import glob
import os
import tempfile
import time

import tensorflow as tf

CONVOLUTIONS = {'Conv2D': 'forward', 'Conv2DBackpropFilter': 'weight gradient',
                'Conv2DBackpropInput': 'input gradient'}
KINDS = (  # (category, operation types), first match wins; the rest is 'other: <type>'.
    ('batch norm', ('FusedBatchNorm', 'FusedBatchNormV3', 'FusedBatchNormEx', 'FusedBatchNormGrad',
                    'FusedBatchNormGradV3', 'BatchNormWithGlobalNormalization')),
    ('transposes, tiles, slices, concatenations', ('Transpose', 'Tile', 'StridedSlice', 'StridedSliceGrad',
                                                   'ConcatV2', 'Pack', 'Unpack', 'Slice', 'Pad')),
    ('ReLU', ('Relu', 'ReluGrad')),
    ('head, losses, metrics (matmuls, softmax)', ('Einsum', 'BatchMatMulV2', 'MatMul',
                                                  'SparseSoftmaxCrossEntropyWithLogits', 'ArgMax', 'Equal')),
    ('meta-optimizer', ('ResourceApplyAdam', 'AssignAddVariableOp', 'AssignSubVariableOp', 'AssignVariableOp')),
    # Second order differentiates TensorFlow's batch-norm gradient formula, written in these ops.
    ('elementwise and reductions (second order: batch norm\'s gradient, differentiated)',
     ('Mul', 'Sum', 'Mean', 'AddN', 'AddV2', 'Sub', 'Neg', 'SquaredDifference', 'RealDiv', 'Rsqrt', 'RsqrtGrad',
      'Square', 'Sqrt', 'Pow', 'Reciprocal', 'BroadcastTo', 'Cast', 'Select', 'SelectV2', 'ZerosLike', 'Fill')),
)


def _xplane_pb2():
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
    return xplane_pb2


def _op_type(name):
    """The operation type of a trace event, e.g. 'Conv2DBackpropFilter' from
    'gradient_tape/Conv2DBackpropFilter_2:_MklNativeConv2DBackpropFilter'."""
    kind = name.rsplit(':', 1)[-1]
    for prefix in ('_MklNative', '_Mkl', '_Fused'):
        kind = kind.removeprefix(prefix)
    return kind


def _layer_of(operation, layers):
    """The convolution layer of a graph operation by the spatial size of its forward output (e.g. 14 for
    the first of a 28x28 network with stride 2): 'conv1', ...; '' when the size is not listed."""
    output = operation.inputs[2] if operation.type != 'Conv2D' else operation.outputs[0]
    return layers.get(tuple(output.shape[1:3]), '')


def profile(step, graph, layers, calls=2):
    """Runs `step()` `calls` times under the profiler.

    Args:
      step: a function running one compiled meta-iteration (and waiting for its result).
      graph: the tf.Graph of that compiled function (for the shapes of its convolutions).
      layers: (height, width) of a convolution's output -> layer name, e.g. {(14, 14): 'conv1', ...}.
    Returns:
      (seconds of wall time per call, seconds in the compiled function per call (the rest is Python
      and the conversion of inputs and outputs), {category: operation seconds per call}).
    """
    operations = {operation.name: operation for operation in graph.get_operations()}
    with tempfile.TemporaryDirectory() as folder:
        tf.profiler.experimental.start(folder)
        start = time.perf_counter()
        for _ in range(calls):
            step()
        wall = (time.perf_counter() - start) / calls
        tf.profiler.experimental.stop()
        space = _xplane_pb2().XSpace()
        with open(glob.glob(os.path.join(folder, '**', '*.xplane.pb'), recursive=True)[0], 'rb') as file:
            space.ParseFromString(file.read())
    categories, inside = collections.Counter(), 0.0
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                name, seconds = names[event.metadata_id].name, event.duration_ps / 1e12 / calls
                if not line.name.startswith('tf_') and name == 'KernelAndDeviceFunc::Run':  # The calling thread.
                    inside += seconds
                elif line.name.startswith('tf_Compute') and ':' in name and not name.startswith('ExecutorState'):
                    categories[_category(name, operations, layers)] += seconds
    return wall, inside, dict(categories)


def _category(event_name, operations, layers):
    kind, operation = _op_type(event_name), operations.get(event_name.rsplit(':', 1)[0])
    if kind in CONVOLUTIONS:
        layer = _layer_of(operation, layers) if operation is not None else ''
        return f'{layer or "convolution"} {CONVOLUTIONS[kind]}'
    for category, kinds in KINDS:
        if kind in kinds:
            return category
    return f'other: {kind}'
