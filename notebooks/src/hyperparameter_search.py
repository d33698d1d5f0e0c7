# ---
# jupyter:
#   jupytext:
#     formats: ipynb,src//py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] id="hyperparameter-search-k-for"
# # Hyperparameter search: K for K-nearest neighbours
#
# From the talk "Serverless for data science": two classes, two features, a
# K-nearest-neighbours classifier. K (how many neighbours vote) is a
# hyperparameter: try every value and keep the most accurate model. Each try
# is independent, so it is one task per K, and each task returns a *trained
# scikit-learn model*, not just a number.

# %% id="load-ext-cloudbutton-jupyter"
# %load_ext cloudbutton_jupyter

# %% id="numpy"
import numpy as np
from sklearn.datasets import make_moons
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

X, y = make_moons(n_samples=1000, noise=0.35, random_state=0)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
print(f"{len(X_train)} training and {len(X_test)} test points, classes {np.bincount(y)}")

# %% [markdown] id="a-first-model-trained"
# A first model, trained locally with a guess for K:

# %% id="local"
local = KNeighborsClassifier(n_neighbors=1).fit(X_train, y_train)
print(f"K=1: accuracy {local.score(X_test, y_test):.3f}")

# %% [markdown] id="now-one-task-per"
# Now one task per K (the odd values avoid ties between the two classes). The
# cell uses `X_train`, `y_train` and `KNeighborsClassifier` from the notebook:
# they travel with it. Its last expression, the fitted model, is the task's result.

# %% id="ks"
ks = list(range(1, 60, 2))

# %% id="cloud-map-ks-as"
# %%cloud map ks as k -o models
KNeighborsClassifier(n_neighbors=k).fit(X_train, y_train)

# %% id="scores"
scores = {m.n_neighbors: m.score(X_test, y_test) for m in models}
best_k = max(scores, key=scores.get)
best_model = next(m for m in models if m.n_neighbors == best_k)
print(f"best K = {best_k}: accuracy {scores[best_k]:.3f} (K=1 gave {scores[1]:.3f})")

# %% id="plot"
try:
    from bokeh.io import output_notebook, show
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    output_notebook(INLINE, hide_banner=True)  # inline BokehJS: works offline
    p = figure(height=250, width=600, title="Test accuracy by K", x_axis_label="K",
               y_axis_label="accuracy")
    p.line(list(scores), list(scores.values()), line_width=2)
    p.scatter([best_k], [scores[best_k]], size=10, color="#d62728")
    show(p)
except ImportError:
    pass

# %% [markdown] id="best-model-is-a"
# `best_model` is a real `KNeighborsClassifier`; use it like any other (the
# talk went on to serve it from a Lambda function):

# %% id="best-model-predict-0"
best_model.predict([[0.0, 1.0], [1.0, -0.5]])

# %% [markdown] id="summary-note"
# *The line below is read by the CI tests.*

# %% id="summary"
import json

print("CLOUDBUTTON_SUMMARY " + json.dumps({
    "notebook": "hyperparameter_search", "ks": ks, "best_k": best_k,
    "best_accuracy": scores[best_k], "accuracies": [scores[k] for k in ks],
    "model_types": sorted({type(m).__name__ for m in models}),
    "model_ks": [m.n_neighbors for m in models]}))
