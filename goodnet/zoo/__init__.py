"""The attack zoo: triggers, attacks (a trigger plus a labelling rule), the bundled MNIST digits,
and the BadNets we train on them (the demo's and the zoo's), cached."""
