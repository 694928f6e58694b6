-- Demo: the legacy shop on MySQL/MariaDB (the source).
CREATE TABLE customers (
    id          INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    first_name  VARCHAR(50)  NOT NULL,
    last_name   VARCHAR(50)  NOT NULL,
    email       VARCHAR(120) NULL,
    phone       VARCHAR(40)  NULL,
    industry    VARCHAR(40)  NOT NULL DEFAULT '',
    status      VARCHAR(10)  NOT NULL DEFAULT 'active',   -- active / blocked
    created_at  DATETIME     NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE orders (
    order_no    INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id INT UNSIGNED NOT NULL,
    amount      DECIMAL(12,2) NOT NULL,
    currency    CHAR(3)      NOT NULL DEFAULT 'cny',
    status_code TINYINT      NOT NULL,                    -- 0 new, 1 paid, 2 shipped, 9 cancelled
    ordered_at  DATETIME(3)  NOT NULL,
    note        TEXT         NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT INTO customers (id, first_name, last_name, email, phone, industry, status, created_at) VALUES
    (1, '小明', '王', ' Wang.XM@Example.cn ', '+86 (10) 5555-0101', 'Retail', 'active', '2019-03-02 09:15:00'),
    (2, '丽', '李', 'li.li@example.cn', '138-0013-8000', '', 'active', '2020-07-18 14:02:11'),
    (3, 'Anna', 'Schmidt', 'anna@example.de', '+49 30 1234567', 'Manufacturing', 'active', '2021-01-05 08:00:00'),
    (4, '强', '张', NULL, NULL, '  ', 'blocked', '2021-11-30 23:59:59');

INSERT INTO orders (order_no, customer_id, amount, currency, status_code, ordered_at, note) VALUES
    (1001, 1, 199.90, 'cny', 1, '2024-05-01 10:00:00.125', '首单'),
    (1002, 1, 15.00, 'cny', 0, '2024-05-02 11:30:00.000', NULL),
    (1003, 2, 1288.00, 'cny', 2, '2024-05-03 16:45:30.500', '加急'),
    (1004, 3, 49.99, 'eur', 9, '2024-05-04 09:00:00.000', 'cancelled by customer');
