#!/usr/bin/env bash
# Every format goodnet reads and writes, one runnable example each (docs/formats.md).
# Run from the repository root after the demo command: bash examples/formats.sh
# It installs Keras 3, onnx and onnxruntime into .venv (Keras only writes the example Keras files).
set -euo pipefail
G=.venv/bin/goodnet
PY=.venv/bin/python
D=$(ls -d "${XDG_CACHE_HOME:-$HOME/.cache}"/goodnet/demo/seed0-*/ | head -1)   # the demo's data files and BadNet
DATA="--clean-valid $D/clean_valid.h5 --poisoned-valid $D/poisoned_valid.h5 --clean-test $D/clean_test.h5 --poisoned-test $D/poisoned_test.h5"
mkdir -p formats-example && cd formats-example && G=../$G PY=../$PY
export KERAS_BACKEND=torch

echo "== goodnet .safetensors (B, B', G): written by defend/demo, read by every command"
$G eval $D/clean_test.h5 $D/poisoned_test.h5 ../goodnet-demo/models/goodnet_x4_crossing.safetensors

echo "== Keras weights-only .h5: write B' in Keras 2.3.1's save_weights layout, read it back"
$G export ../goodnet-demo/models/repaired_x4_crossing.safetensors --to keras --out b_prime_weights.h5
$G eval $D/clean_test.h5 $D/poisoned_test.h5 b_prime_weights.h5 --arch small_cnn --input-scale 255

echo "== Keras full-model .h5: made by real Keras from the demo BadNet, then defended"
../.venv/bin/pip install -q 'keras>=3' onnxruntime onnx
$G export $D/badnet.safetensors --to keras --out badnet_weights.h5
$PY ../examples/keras_full_model.py badnet_weights.h5 badnet_full.h5 2>/dev/null
$G defend --model badnet_full.h5 --input-scale 255 $DATA --thresholds 4 --out keras-out --quiet
$PY -c "import keras, h5py, numpy as np
m = keras.models.load_model('keras-out/models/repaired_x4_crossing.h5', compile=False)
f = h5py.File('$D/clean_test.h5')
print('Keras itself on B\'', 'clean test accuracy', 100 * np.mean(m.predict(f['data'][()].transpose(0, 2, 3, 1) / 255, verbose=0).argmax(1) == f['label'][()]))" 2>/dev/null

echo "== Keras 3 .keras archive: the same model in Keras 3's own format, defended; B' comes back as .keras"
$PY -c "import keras; keras.models.load_model('badnet_full.h5', compile=False).save('badnet.keras')" 2>/dev/null
$G defend --model badnet.keras --input-scale 255 $DATA --thresholds 4 --out keras3-out --quiet
$PY -c "import keras, h5py, numpy as np
m = keras.saving.load_model('keras3-out/models/repaired_x4_crossing.keras', compile=False)
f = h5py.File('$D/clean_test.h5')
print('Keras itself on the .keras B\'', 'clean test accuracy', 100 * np.mean(m.predict(f['data'][()].transpose(0, 2, 3, 1) / 255, verbose=0).argmax(1) == f['label'][()]))" 2>/dev/null

echo "== Keras architecture JSON (model.to_json()) + a weights-only file"
$PY -c "import keras; open('arch.json', 'w').write(keras.models.load_model('badnet_full.h5', compile=False).to_json())" 2>/dev/null
$G eval $D/clean_test.h5 $D/poisoned_test.h5 badnet_weights.h5 --arch arch.json --input-scale 255

echo "== your PyTorch class (--factory) + a state dict read with weights_only"
PYTHONPATH=../examples $PY ../examples/user_model.py
PYTHONPATH=../examples $G defend --model tiny_resnet.pt --factory user_model:tiny_resnet --layer block.conv1 $DATA --out resnet-out --quiet

echo "== TorchScript: rebuild resnet-out's B' at X=10 from its channel list (--channels)"
CHANNELS=$($PY -c "import json; t = [t for t in json.load(open('resnet-out/results.json'))['thresholds'] if t['x'] == 10][0]; print(','.join(map(str, t['pruned'])))")
$G defend --model tiny_resnet_scripted.pt --trust-model-code --layer block.conv1 --channels $CHANNELS --clean-test $D/clean_test.h5 --poisoned-test $D/poisoned_test.h5 --out ts-out

echo "== ONNX: G as one graph, served by onnxruntime"
$G export ../goodnet-demo/models/goodnet_x4_crossing.safetensors --to onnx --out g.onnx
$PY -c "import onnxruntime as ort, h5py, numpy as np
f = h5py.File('$D/poisoned_test.h5'); x = f['data'][()].astype(np.float32)
labels = ort.InferenceSession('g.onnx', providers=['CPUExecutionProvider']).run(['label'], {'image': x})[0]
print('onnxruntime G on poisoned test: ASR', 100 * np.mean(labels == f['label'][()]), 'flagged', 100 * np.mean(labels == 10))"

echo "== PNG/JPEG images: goodnet classify (prints one label per image; 10 = poisoned)"
$PY -c "import h5py, numpy as np; from PIL import Image
for name in ('clean_test', 'poisoned_test'):
    Image.fromarray(h5py.File('$D/' + name + '.h5')['data'][7, 0].astype(np.uint8)).save(name + '_7.png')"
$G classify ../goodnet-demo/models/goodnet_x4_crossing.safetensors clean_test_7.png poisoned_test_7.png
