# A scikit-learn estimator with random_state=None: it draws from NumPy's global generator,
# which seeds itself from the kernel's entropy.
import json
import numpy as np
from sklearn.ensemble import RandomForestClassifier
X = np.arange(80, dtype=float).reshape(40, 2) % 7
y = (np.arange(40) % 3 == 0).astype(int)
model = RandomForestClassifier(n_estimators=5, max_features=1, bootstrap=True).fit(X, y)
json.dump({"first_split": float(model.estimators_[0].tree_.threshold[0]),
           "proba": float(model.predict_proba(X)[:, 1].sum())}, open("/out/metrics.json", "w"))
