"""Brain comparison: RSA of every rule's layers against brain recordings (rsatoolbox).

- `recordings`: the Kriegeskorte et al. 2008 92-image data and a reader for your own
  recordings (RDMs or response matrices plus stimulus images);
- `stimuli`: images to a network's input format;
- `rsa`: RDMs, comparisons, noise ceiling, bootstrap over stimuli, best-layer selection;
- `compare`: scoring learners and runs with their untrained and classic-model baselines;
- `encoding`: optional ridge encoding model for response matrices;
- `store`, `plots`, `cli`: results tables, figures and the `bioplausible brain` command.
"""

from .recordings import Recordings, Responses, Target, load_folder, load_kriegeskorte92, load_recordings

__all__ = ["Recordings", "Responses", "Target", "load_folder", "load_kriegeskorte92", "load_recordings"]
