"""Pipeline components, one folder per component under its stage: `<stage>/<name>/{core,component}.py`.

core.py is the logic (paths and typed config in, typed result out; testable without KFP);
component.py is the thin KFP wrapper that maps dsl.Input/dsl.Output to paths and calls the core.
"""
