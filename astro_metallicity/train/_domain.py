"""Domain-adversarial training (DANN) for `~astro_metallicity.train.train_model`.

A small classifier learns to tell the network's penultimate-layer embedding of
the training cutouts (the simulated sky) from that of unlabelled images of the
target domain (real SDSS JPEGs); a gradient reversal layer between the
embedding and the classifier makes the network learn features the classifier
cannot separate (Ganin et al. 2016, JMLR 17, 59; for simulated and real galaxy
images, Ciprijanovic et al. 2021, MNRAS 506, 677). The target images need no
labels: only their pixels enter the loss.
"""

import math

__all__ = []

#: Width of the hidden layer of the domain classifier (Ganin et al. use 1024 on 2048-d
#: features; the ResNet-18 embedding has 512).
_HIDDEN = 256


def _reverse_gradient():
    import torch

    class _GradientReversal(torch.autograd.Function):
        """Identity forward; the gradient multiplied by ``-scale`` backward."""

        @staticmethod
        def forward(ctx, x, scale):
            ctx.scale = scale
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return -ctx.scale * grad, None

    return _GradientReversal.apply


def reversal_scale(progress, weight):
    """The gradient reversal scale of Ganin et al. (2016) at a point of the run.

    Parameters
    ----------
    progress : float
        Fraction of the optimisation steps done, in [0, 1].
    weight : float
        The scale reached at the end of the run.

    Returns
    -------
    scale : float
        ``weight * (2 / (1 + exp(-10 progress)) - 1)``: 0 at the start, so the
        classifier learns before it steers the features, close to ``weight``
        from about a third of the run on.
    """
    return float(weight) * (2.0 / (1.0 + math.exp(-10.0 * float(progress))) - 1.0)


class DomainAdversary:
    """The domain classifier, its optimiser and the target-domain images of one run.

    Parameters
    ----------
    network : `torch.nn.Module`
        The network being trained; its last `torch.nn.Linear` layer's input is
        the embedding the classifier sees.
    dataset : `torch.utils.data.Dataset`
        The target-domain images (no labels), as ``(image, anything)`` pairs,
        augmented as the training cutouts are.
    weight : float
        Final gradient reversal scale (`reversal_scale`).
    batch_size : int
        Target images per optimisation step.
    lr : float
        Learning rate of the classifier (Adam, constant).
    seed : int
        Seed of the classifier's initialisation and of the target batches.
    device : `torch.device`
        Where the classifier lives (the network's device).
    """

    def __init__(self, network, dataset, *, weight, batch_size, lr, seed, device):
        import torch
        from torch import nn

        heads = [m for m in network.modules() if isinstance(m, nn.Linear)]
        if not heads:
            msg = "domain-adversarial training needs a network ending in a torch.nn.Linear layer"
            raise ValueError(msg)
        self._head = heads[-1]
        # its own seed, leaving the global stream (and so the network's training) untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) * 7919 + 17)
            self.classifier = nn.Sequential(nn.Linear(self._head.in_features, _HIDDEN),
                                            nn.ReLU(), nn.Linear(_HIDDEN, 1))
        self.classifier.to(device)
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=float(lr))
        self.weight = float(weight)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._dataset = dataset
        self._reverse = _reverse_gradient()
        self._captured = None

    def batches(self, n_steps, epoch):
        """An iterator of ``n_steps`` augmented target batches (drawn with replacement)."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 100_043 + epoch)
        sampler = torch.utils.data.RandomSampler(
            self._dataset, replacement=True, num_samples=n_steps * self.batch_size,
            generator=generator)
        loader = torch.utils.data.DataLoader(self._dataset, batch_size=self.batch_size,
                                             sampler=sampler)
        return (images for images, _ in loader)

    def capture(self):
        """Keep the embedding of the next forward pass (a hook on the last linear layer)."""
        def hook(module, args):
            self._captured = args[0]

        return self._head.register_forward_pre_hook(hook)

    def loss(self, n_source, progress):
        """Classifier loss on the captured embedding (the first ``n_source`` rows are
        the training cutouts, the rest target images), through the gradient reversal.

        Returns the loss and the classifier's balanced accuracy on the batch (the mean
        of its accuracies on the two domains: 0.5 at chance, whatever the batch sizes).
        """
        import torch

        embedding = self._captured.float()
        self._captured = None
        scale = reversal_scale(progress, self.weight)
        logits = self.classifier(self._reverse(embedding, scale)).squeeze(1)
        target = torch.zeros_like(logits)
        target[n_source:] = 1.0
        per = torch.nn.functional.binary_cross_entropy_with_logits(logits, target,
                                                                   reduction="none")
        # each domain weighs half, whatever the two batch sizes
        loss = 0.5 * (per[:n_source].mean() + per[n_source:].mean())
        correct = ((logits > 0).float() == target).float()
        accuracy = 0.5 * float(correct[:n_source].mean() + correct[n_source:].mean())
        return loss, accuracy

    def state_dict(self):
        return {"classifier": self.classifier.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
