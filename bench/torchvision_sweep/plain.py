import sys, time, numpy as np, onnxruntime as ort
m, data = sys.argv[1], sys.argv[2]
d = np.load(data); x = d['x']
s = ort.InferenceSession(m, providers=['CPUExecutionProvider'])
inp = s.get_inputs()[0]; fixed = isinstance(inp.shape[0], int)
bs = inp.shape[0] if fixed else 64
t0 = time.time(); preds = []
for i in range(0, len(x), bs):
    preds.append(s.run(None, {inp.name: x[i:i+bs]})[0].argmax(1))
t = time.time() - t0
acc = (np.concatenate(preds) == d['y']).mean()
print(f"plain_s={t:.2f} acc={acc:.3f} bs={bs}")
