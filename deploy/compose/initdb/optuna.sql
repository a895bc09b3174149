-- The Optuna study's database, beside MLflow's (postgresql://sslab@postgres/optuna).
CREATE DATABASE optuna;
