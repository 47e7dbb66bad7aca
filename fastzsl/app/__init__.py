"""Applications built on the library: data sets, the Fashion-MNIST main job, the novelty
experiment and the reproduction of the paper's experiments.

Everything here uses the public estimators (:mod:`fastzsl`) and adds data loading,
experiment protocols, tables and figures; the library never imports from here, and the
command line (:mod:`fastzsl.cli`) only parses arguments and calls these functions.
"""
