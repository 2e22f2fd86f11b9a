"""The attack zoo: triggers, attacks (a trigger plus a labelling rule), the bundled MNIST digits,
and the BadNets trained on them (the demo's and the zoo's), cached."""
