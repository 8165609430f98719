"""Anomaly detection with DxMI-trained EBMs (the paper's MVTec-AD experiment, reference §2 EV, §7.4).

networks   the energy MLP (no time input) and the convolutional feature-map networks (registered)
data       npz vectors and UniAD-style feature-map files, the training-set standardisation
score      ``--mode=score``: energies of new rows under a trained workdir
fit        in-process detectors (DxMI, Langevin-MCMC EBM), seeds vmapped in one compiled step
mcmc       the Langevin-MCMC EBM baseline (persistent chains)
classical  the scikit-learn baselines (IsolationForest, LOF, kNN, OCSVM)
featmap    detection and localisation on (H, W, C) feature maps
metrics    AUROC / AUPRC and the novelty split
synthetic  data the tests make (vectors with planted anomalies, maps with planted patches)
"""
