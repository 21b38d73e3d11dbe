"""Several trained networks run as one: the network of an ensemble model.

Private: an ensemble is made with `astro_metallicity.train.ensemble_models` and
loaded with `astro_metallicity.load_model` like any model; prediction, test-time
augmentation, saving and loading see one network with the usual output (a mean
and a log-variance per quantity, in the ensemble's standardised label units).

Importing this module imports torch: `astro_metallicity._network` imports it
only when a model is an ensemble.
"""

import torch
from torch import nn

__all__ = ["EnsembleNetwork"]


class EnsembleNetwork(nn.Module):
    """Members' predictions combined into one mean and variance per quantity.

    Each member reads its own input normalisation and predicts in its own
    standardised label units (its metadata's ``normalization``, ``label_mean``
    and ``label_std``): the ensemble converts the shared input to each member's,
    and each member's output to physical units. For every quantity it then
    combines the members that predict it with equal weights, as a mixture
    (Lakshminarayanan, Pritzel & Blundell 2017, NeurIPS): the mean of the
    members' means, and the mean of their variances plus the variance of their
    means, so members that disagree widen the error bar.

    Parameters
    ----------
    members : sequence of `torch.nn.Module`
        The member networks (each maps ``(N, 3, S, S)`` to ``(N, 2 * n_outputs)``).
    member_metadata : sequence of dict
        Metadata of each member (``outputs``, ``label_mean``, ``label_std``,
        ``normalization``).
    metadata : dict
        The ensemble's metadata (``outputs``, ``label_mean``, ``label_std``,
        ``normalization``).
    """

    def __init__(self, members, member_metadata, metadata):
        super().__init__()
        if len(members) != len(member_metadata) or not members:
            msg = (f"an ensemble needs one metadata dict per member and at least one member, "
                   f"got {len(members)} networks and {len(member_metadata)} metadata")
            raise ValueError(msg)
        self.members = nn.ModuleList(members)
        self.n_member_outputs = [len(meta["outputs"]) for meta in member_metadata]
        # per quantity: (member, column) of every member that predicts it
        self.columns = []
        for name in metadata["outputs"]:
            columns = [(i, list(meta["outputs"]).index(name))
                       for i, meta in enumerate(member_metadata) if name in meta["outputs"]]
            if not columns:
                msg = f"no member of the ensemble predicts {name!r}"
                raise ValueError(msg)
            self.columns.append(columns)

        def vector(values):
            return torch.tensor([float(v) for v in values], dtype=torch.float32)

        shared_mean = vector(metadata["normalization"]["mean"]).view(1, 3, 1, 1)
        shared_std = vector(metadata["normalization"]["std"]).view(1, 3, 1, 1)
        # not persistent: rebuilt from the metadata, so the weights file holds only weights
        for i, meta in enumerate(member_metadata):
            mean = vector(meta["normalization"]["mean"]).view(1, 3, 1, 1)
            std = vector(meta["normalization"]["std"]).view(1, 3, 1, 1)
            # shared input x = (p - m0) / s0, member input (p - m) / s = x s0 / s + (m0 - m) / s
            self.register_buffer(f"input_gain{i}", shared_std / std, persistent=False)
            self.register_buffer(f"input_offset{i}", (shared_mean - mean) / std,
                                 persistent=False)
            self.register_buffer(f"label_std{i}", vector(
                meta["label_std"][name] for name in meta["outputs"]), persistent=False)
            self.register_buffer(f"label_mean{i}", vector(
                meta["label_mean"][name] for name in meta["outputs"]), persistent=False)
        self.register_buffer("label_mean", vector(
            metadata["label_mean"][name] for name in metadata["outputs"]), persistent=False)
        self.register_buffer("label_std", vector(
            metadata["label_std"][name] for name in metadata["outputs"]), persistent=False)

    def forward(self, x):
        means, variances = [], []
        for i, member in enumerate(self.members):
            raw = member(x * getattr(self, f"input_gain{i}") + getattr(self, f"input_offset{i}"))
            n = self.n_member_outputs[i]
            std = getattr(self, f"label_std{i}")
            means.append(raw[:, :n] * std + getattr(self, f"label_mean{i}"))
            variances.append(torch.exp(raw[:, n:].clamp(-20.0, 20.0)) * std * std)
        out_mean, out_logvar = [], []
        for j, columns in enumerate(self.columns):
            mu = torch.stack([means[i][:, c] for i, c in columns], dim=0)
            var = torch.stack([variances[i][:, c] for i, c in columns], dim=0)
            total = var.mean(dim=0) + mu.var(dim=0, unbiased=False)
            out_mean.append((mu.mean(dim=0) - self.label_mean[j]) / self.label_std[j])
            out_logvar.append(torch.log(total) - 2.0 * torch.log(self.label_std[j]))
        return torch.cat([torch.stack(out_mean, dim=1), torch.stack(out_logvar, dim=1)], dim=1)
