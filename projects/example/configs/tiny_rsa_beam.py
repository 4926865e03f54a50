# The tiny CPU config with this project's similarity metric and solver, registered from outside
# `dery` and imported by `custom_imports` (run from the repository root with PYTHONPATH=.):
#
#   PYTHONPATH=. python tools/partition.py projects/example/configs/tiny_rsa_beam.py
#   PYTHONPATH=. python tools/assemble.py  projects/example/configs/tiny_rsa_beam.py
_base_ = ['../../../configs/dery/tiny_cpu.py']

custom_imports = dict(  # lists replace the base's: keep dery.all_modules (mmpretrain's tools find DeRy's modules)
    imports=['dery.all_modules', 'projects.example.rsa_similarity', 'projects.example.beam_solver'],
    allow_failed_imports=False)

similarity = dict(_delete_=True, type='RSASimilarity', kind='pearson', pooling='avg')
solver = dict(_delete_=True, type='BeamSolver', beam_width=8, top_m=3)
