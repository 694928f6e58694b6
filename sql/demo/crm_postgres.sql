-- Demo: the CRM on PostgreSQL (the target).
CREATE TABLE crm_customer (
    customer_no text PRIMARY KEY,            -- C00000042
    full_name   text NOT NULL,
    email       text,
    phone       text,
    industry    text NOT NULL,
    since       date
);

-- A lookup table that lives in the CRM: rules join it at apply time.
CREATE TABLE crm_order_status (
    code  smallint PRIMARY KEY,
    label text NOT NULL
);
INSERT INTO crm_order_status VALUES (0, 'new'), (1, 'paid'), (2, 'shipped'), (9, 'cancelled');

CREATE TABLE crm_order (
    order_ref   text PRIMARY KEY,            -- SO-1001
    customer_no text NOT NULL,
    amount      numeric(12,2) NOT NULL CHECK (amount > 0),
    currency    text NOT NULL,
    status      text NOT NULL,
    order_month text NOT NULL,               -- 2024-05
    ordered_at  timestamp(3) NOT NULL
);
